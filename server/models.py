"""Imports every table module, so Base.metadata knows the whole schema."""

from server.auth import models as auth_models  # noqa: F401
