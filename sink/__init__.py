"""asset-event-sink: stores AssetEvents from Kafka in PostgreSQL, append-only, exactly once."""

__version__ = "0.1.0"
