"""The kernel: configuration, topics, record schemas, Kafka bus, embedded broker."""
