"""repwise client SDK (Python): RepwiseClient calls every repwise.v1 service with automatic
token refresh, safe retries and an on-disk model bundle cache; frames.py adds pandas and
matplotlib helpers for notebooks (`pip install 'repwise[notebook]'`)."""

from client_sdk.client import RepwiseClient, RepwiseError, Tokens

__all__ = ["RepwiseClient", "RepwiseError", "Tokens"]
