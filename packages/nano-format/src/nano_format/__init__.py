"""nano-format."""
