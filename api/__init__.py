"""The HTTP side: the account API (and what customers and switches reach over HTTP)."""
