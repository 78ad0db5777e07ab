"""The exercise catalog."""
