"""Long-running Kafka processes of the engine and the CLI that assembles them."""
