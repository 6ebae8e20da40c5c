"""Throughput, delay and memory benchmark of the sink against its limit and a peer.

``python -m bench run`` generates realistic AssetEvents, produces them to a fresh topic and
measures, on the same events and a freshly migrated database each:

* ``limit`` — ``psql \\copy`` of the same rows straight into ``asset_events``;
* ``limit-ids`` — the same plus the ``asset_event_ids`` registry the sink also fills;
* ``sink`` — ``asset-sink run`` from offset 0 until every event is committed;
* ``peer`` — Kafka Connect with the Debezium JDBC sink connector (``--peer``).

See docs/benchmark.md for what each figure means and how to read the results.
"""
