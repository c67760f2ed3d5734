"""Text sources for calibration and evaluation, and statistics gathered by hooks."""
