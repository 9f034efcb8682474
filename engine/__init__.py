"""A running engine: its assembly, its services (embedded or configured)."""
