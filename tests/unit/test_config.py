import argparse

import pytest

from sink.config import Settings, add_arguments
from sink.errors import FatalError

BASE = {"SINK_BOOTSTRAP_SERVERS": "k:9092", "SINK_DATABASE_URL": "postgresql://u:s3cret@db/x"}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_match_the_documented_ones():
    s = Settings.from_sources(_args(), BASE)
    assert (s.topic, s.group_id, s.dlq_topic, s.metrics_port) == (
        "asset-events", "asset-event-sink", "asset-events.dlq", 9108,
    )
    assert s.drain_timeout_s < 30  # below Kubernetes' default grace period


def test_flag_beats_environment_and_environment_beats_default():
    env = {**BASE, "SINK_TOPIC": "from-env", "SINK_BATCH_MAX_EVENTS": "123"}
    s = Settings.from_sources(_args("--topic", "from-flag"), env)
    assert s.topic == "from-flag"
    assert s.batch_max_events == 123


def test_missing_required_settings_are_named():
    with pytest.raises(FatalError) as info:
        Settings.from_sources(_args(), {})
    assert "SINK_BOOTSTRAP_SERVERS is required" in str(info.value)
    assert "SINK_DATABASE_URL is required" in str(info.value)


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("SINK_BATCH_MAX_EVENTS", "lots", "not a whole number"),
        ("SINK_BATCH_MAX_EVENTS", "0", "below the minimum 1"),
        ("SINK_METRICS_PORT", "70000", "above the maximum 65535"),
        ("SINK_DRAIN_TIMEOUT_S", "soon", "not a number"),
        ("SINK_LOG_LEVEL", "LOUD", "must be one of"),
    ],
)
def test_bad_values_fail_at_start_up_with_the_variable_and_rule(var, value, words):
    with pytest.raises(FatalError) as info:
        Settings.from_sources(_args(), {**BASE, var: value})
    assert var in str(info.value)
    assert words in str(info.value)


def test_kafka_properties_pass_through_from_environment_and_flags():
    env = {**BASE, "SINK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "SINK_KAFKA_SASL_PASSWORD": "hunter2"}
    s = Settings.from_sources(_args("-X", "fetch.min.bytes=1000"), env)
    assert s.kafka_properties == {
        "security.protocol": "SASL_SSL", "sasl.password": "hunter2", "fetch.min.bytes": "1000",
    }


def test_kafka_properties_the_worker_owns_are_refused():
    with pytest.raises(FatalError, match=r"enable\.auto\.commit"):
        Settings.from_sources(_args(), {**BASE, "SINK_KAFKA_ENABLE_AUTO_COMMIT": "true"})


def test_secrets_never_appear_in_repr_or_log_fields():
    env = {**BASE, "SINK_KAFKA_SASL_PASSWORD": "hunter2"}
    s = Settings.from_sources(_args(), env)
    for text in (repr(s), str(s.log_fields())):
        assert "s3cret" not in text
        assert "hunter2" not in text
        assert "postgresql://u:***@db/x" in text


def test_a_bad_secret_value_is_not_echoed():
    with pytest.raises(FatalError) as info:
        Settings.from_sources(_args(), {**BASE, "SINK_DATABASE_URL": ""})
    assert "s3cret" not in str(info.value)
