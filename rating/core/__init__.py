"""The pure rating core: money, pricing, events, tariffs in memory, rating, quotes; no I/O."""
