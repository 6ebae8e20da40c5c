"""The replay plan: targets per partition, clamped to the watermarks (no broker)."""

from __future__ import annotations

import pytest

from sink.replay import (
    PartitionPlan,
    PartitionState,
    Target,
    parse_partitions,
    plan_partition,
    render_plan,
    stop_workers_hint,
)

STATE = PartitionState(partition=0, committed=80, low=20, high=100)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (Target("earliest"), 20),
        (Target("latest"), 100),
        (Target("offset", 50), 50),
        (Target("offset", 5), 20),  # below the low watermark: clamped up
        (Target("offset", 500), 100),  # beyond the end: clamped down
        (Target("shift", -30), 50),
        (Target("shift", -300), 20),
        (Target("shift", 300), 100),
    ],
)
def test_target_is_computed_then_clamped_to_the_watermarks(target, expected):
    assert plan_partition(STATE, target).target == expected


def test_datetime_target_uses_the_timestamp_offset_or_the_end_when_nothing_is_that_recent():
    found = PartitionState(0, 80, 20, 100, timestamp_offset=60)
    assert plan_partition(found, Target("datetime", 1)).target == 60
    none = PartitionState(0, 80, 20, 100, timestamp_offset=None)
    assert plan_partition(none, Target("datetime", 1)).target == 100


def test_partition_without_committed_offset_counts_from_the_low_watermark():
    fresh = PartitionState(0, None, 20, 100)
    assert plan_partition(fresh, Target("shift", 10)).target == 30
    plan = plan_partition(fresh, Target("earliest"))
    assert (plan.replay, plan.skip) == (0, 0)


def test_replay_and_skip_count_messages_between_the_resume_position_and_the_target():
    back = plan_partition(STATE, Target("offset", 50))
    assert (back.replay, back.skip) == (30, 0)
    forward = plan_partition(STATE, Target("latest"))
    assert (forward.replay, forward.skip) == (0, 20)
    # a committed offset older than the retention resumes at the low watermark
    expired = plan_partition(PartitionState(0, 3, 20, 100), Target("earliest"))
    assert (expired.position, expired.replay) == (20, 0)


def test_render_plan_totals_the_partitions():
    plans = [PartitionPlan(0, 80, 20, 100, 50), PartitionPlan(1, 10, 0, 40, 40)]
    text = render_plan(plans)
    assert text.splitlines()[0].split() == [
        "PARTITION",
        "COMMITTED",
        "LOW",
        "HIGH",
        "TARGET",
        "REPLAY",
        "SKIP",
    ]
    assert text.splitlines()[-1] == "total: 30 messages to replay, 30 to skip"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", (0,)),
        ("2,0,2", (0, 2)),
        ("0-3,7", (0, 1, 2, 3, 7)),
        (" 1 , 3 ", (1, 3)),
    ],
)
def test_partitions_list_accepts_numbers_and_ranges(text, expected):
    assert parse_partitions(text) == expected


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "1,,x"])
def test_partitions_list_rejects_anything_else(text):
    with pytest.raises(ValueError):
        parse_partitions(text)


def test_the_refusal_says_how_to_scale_the_workers_to_zero_with_and_without_keda():
    hint = stop_workers_hint("asset-event-sink")
    assert 'autoscaling.keda.sh/paused-replicas="0"' in hint
    assert "kubectl scale deploy/" in hint and "--replicas=0" in hint
    assert "'asset-event-sink'" in hint
