"""Numerical helpers for variable-nablas."""
