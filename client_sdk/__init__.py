"""repwise client SDK (Python). The full client lands with the training issue;
until then use the generated stubs in `repwise.v1` as the README shows."""
