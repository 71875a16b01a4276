"""Sources: where raw records come from (scenario files, Kafka, Prometheus)."""
