"""nano-tokenizer."""
