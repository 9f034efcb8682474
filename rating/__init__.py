"""The rating engine as a library: a pure rating core beside its PostgreSQL and settings modules."""
