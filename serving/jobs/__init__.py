"""Retraining from the feedback log, and its schedule."""
