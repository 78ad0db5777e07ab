"""Workout logs, sync, history and statistics."""
