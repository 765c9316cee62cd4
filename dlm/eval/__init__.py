"""Evaluation: likelihood bounds with standard errors."""
