"""Evaluations of learned representations."""
