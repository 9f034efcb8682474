"""The long-running Kafka processes: usage consumer, outbox relay, recharge worker,
tariff watcher, and their Kafka plumbing, retry and metrics."""
