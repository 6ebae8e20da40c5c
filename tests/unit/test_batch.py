import time

from sink.batch import Batch


class Msg:
    def __init__(self, topic, partition, offset, value=b"{}", ts=1_700_000_000_000):
        self._t, self._p, self._o, self._v, self._ts = topic, partition, offset, value, ts

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def timestamp(self):
        return (1, self._ts)


def test_batch_closes_on_count():
    b = Batch(max_events=3, max_bytes=1 << 20, max_wait_s=60)
    for i in range(2):
        b.add(Msg("t", 0, i))
    assert not b.ready()
    b.add(Msg("t", 0, 2))
    assert b.ready()


def test_batch_closes_on_bytes():
    b = Batch(max_events=100, max_bytes=10, max_wait_s=60)
    b.add(Msg("t", 0, 0, b"x" * 6))
    assert not b.ready()
    b.add(Msg("t", 0, 1, b"x" * 6))
    assert b.ready()


def test_batch_closes_on_age_and_empty_batch_is_never_ready():
    b = Batch(max_events=100, max_bytes=1 << 20, max_wait_s=0.05)
    assert not b.ready()
    b.add(Msg("t", 0, 0))
    assert not b.ready()
    time.sleep(0.06)
    assert b.ready()


def test_next_offsets_cover_the_last_message_of_each_partition_plus_one():
    b = Batch(max_events=100, max_bytes=1 << 20, max_wait_s=60)
    for p, o in [(0, 5), (1, 9), (0, 6), (1, 10), (2, 0)]:
        b.add(Msg("t", p, o))
    assert b.next_offsets == {("t", 0): 7, ("t", 1): 11, ("t", 2): 1}


def test_tombstones_count_as_messages_but_not_bytes():
    b = Batch(max_events=100, max_bytes=1 << 20, max_wait_s=60)
    b.add(Msg("t", 0, 0, None))
    assert len(b) == 1 and b.value_bytes == 0 and b.next_offsets == {("t", 0): 1}


def test_dropping_revoked_partitions_forgets_their_messages_and_offsets():
    b = Batch(max_events=100, max_bytes=1 << 20, max_wait_s=60)
    for p, o in [(0, 5), (1, 9), (0, 6)]:
        b.add(Msg("t", p, o, b"abc"))
    assert b.drop_partitions({("t", 0)}) == 2
    assert [m.offset() for m in b.messages] == [9]
    assert b.next_offsets == {("t", 1): 10}
    assert b.value_bytes == 3
    assert ("t", 0) not in b.first_timestamp
