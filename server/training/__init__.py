"""Per-user models and batch training."""
