"""Readers and writers per on-disk format, model loading, and atomic output."""
