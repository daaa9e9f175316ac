"""Low-level helpers shared by every layer."""
