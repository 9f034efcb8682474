"""Card payments: the provider interface and the simulated provider."""
