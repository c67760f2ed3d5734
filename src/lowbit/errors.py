"""Errors a user can fix: the CLI prints them as one line and exits with status 2."""


class LowbitError(Exception):
    """Bad input or an impossible request. The message names the problem and the fix."""
