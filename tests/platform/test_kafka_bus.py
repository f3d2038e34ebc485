"""The bus's consumer-group contract, on each Kafka client: a member that lost its generation cannot commit, and
partitions taken away while a batch waits (paused) are consumed again once they come back; a topic log reads every
writer's entries in one order."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
from platform_testing import bus_settings, committed

from lema.bus.kafka import (
    KEEPALIVE_S,
    BusError,
    Delivery,
    KafkaInbox,
    RawMessage,
    ensure_topics,
    kafka_bus,
    kafka_inbox,
    kafka_log,
)
from lema.config import BusSettings
from lema.runtime.infra import LocalBroker


def poll_until(inbox: KafkaInbox, count: int, timeout_s: float = 60) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        assert time.monotonic() < deadline, f"polled {len(got)} of {count} messages"
        got += inbox.poll(0.5, max_records=count - len(got))
    return got


def feed_work(settings: BusSettings) -> None:
    """Twenty keyed messages on the topic `work`."""
    producer = kafka_bus(settings, client_id="test-work-feed")
    producer.publish_raw([RawMessage("work", f"k{i}".encode(), b"v", []) for i in range(20)])
    producer.close()


def test_an_evicted_members_commit_is_refused_and_its_successor_redoes_the_batch(
    broker: LocalBroker, bus_client: str
) -> None:
    """The zombie: it polled a batch, then stayed silent past the poll interval; the group gave its partitions to
    a successor, which consumes the same messages. The zombie's late commit must not move the group's offsets."""
    settings = bus_settings(broker, client=bus_client)
    ensure_topics(settings, ["work"], partitions=2, replication_factor=1)
    feed_work(settings)
    group = settings.group_prefix + "work"
    zombie = kafka_inbox(settings, group, ["work"], client_id="test-zombie")
    successor = None
    try:
        batch = poll_until(zombie, 5)
        time.sleep(settings.max_poll_interval_ms / 1000 + 3)  # no poll: evicted from the group
        successor = kafka_inbox(settings, group, ["work"], client_id="test-successor")
        redone = poll_until(successor, 20)  # every message, the zombie's batch included
        assert {d.key for d in batch} <= {d.key for d in redone}
        assert zombie.commit(batch) is False
        assert committed(settings, "work") == {}
        assert successor.commit(redone) is True
        assert sum(committed(settings, "work").values()) == 20
    finally:
        zombie.close()
        if successor is not None:
            successor.close()


def test_a_commit_sent_without_waiting_lands_and_an_evicted_members_moves_nothing(
    broker: LocalBroker, bus_client: str
) -> None:
    """The worker commits without waiting between batches: the commit must land while the member goes on polling,
    and an evicted member's must be refused as a waited one is (logged, not raised)."""
    settings = bus_settings(broker, client=bus_client)
    ensure_topics(settings, ["work"], partitions=1, replication_factor=1)
    feed_work(settings)
    group = settings.group_prefix + "work"
    member = kafka_inbox(settings, group, ["work"], client_id="test-member")
    try:
        batch = poll_until(member, 20)
        member.commit(batch[:12], wait=False)
        deadline = time.monotonic() + 30
        while committed(settings, "work") != {("work", 0): 12}:
            assert time.monotonic() < deadline, f"committed {committed(settings, 'work')}, expected 12"
            member.poll(0.2)
        time.sleep(settings.max_poll_interval_ms / 1000 + 3)  # no poll: evicted from the group
        member.commit(batch, wait=False)
        member.poll(1)  # the answer comes back while polling (the member rejoins)
        time.sleep(1)
        assert committed(settings, "work") == {("work", 0): 12}
    finally:
        member.close()


def test_partitions_taken_away_while_a_batch_waits_are_consumed_once_they_come_back(
    broker: LocalBroker, bus_client: str
) -> None:
    """The member waits for a batch with its partitions paused; another member joins meanwhile and takes some; when
    it leaves they come back, and the first member consumes them (they are not left paused)."""
    settings = bus_settings(broker, client=bus_client).model_copy(update={"batch_size": 4})
    ensure_topics(settings, ["work"], partitions=2, replication_factor=1)
    feed_work(settings)
    group = settings.group_prefix + "work"
    member = kafka_inbox(settings, group, ["work"], client_id="test-member")
    visitor = kafka_inbox(settings, group, ["work"], client_id="test-visitor")
    batch_done: Future[None] = Future()

    def visit() -> None:  # joins (a rebalance while the member waits) and takes messages, which it never commits
        poll_until(visitor, 1)
        batch_done.set_result(None)

    try:
        seen = {d.key for d in poll_until(member, 1)}
        visiting = threading.Thread(target=visit)
        visiting.start()
        member.wait_paused(batch_done, keep=1)
        visiting.join()
    finally:
        visitor.close()  # its partitions go back to the member
    deadline = time.monotonic() + 60
    try:
        while len(seen) < 20:
            assert time.monotonic() < deadline, f"consumed {len(seen)} of 20 keys: partitions left paused"
            seen |= {d.key for d in member.poll(0.5)}
    finally:
        member.close()


def test_messages_fetched_before_a_long_wait_are_handed_out_at_once_after_it(
    broker: LocalBroker, bus_client: str
) -> None:
    """A batch that outlasts KEEPALIVE_S is waited for paused. The messages fetched before the wait, as many as the
    caller keeps, must be the next poll's, at once and in order: fetched again, they would cost the worker a round
    trip at every batch's end, with its window short of batches meanwhile (the LLM stages over Kafka drained their
    window that way). A window whose batches all end together takes several batches at once."""
    settings = bus_settings(broker, client=bus_client).model_copy(update={"batch_size": 2})
    ensure_topics(settings, ["work"], partitions=1, replication_factor=1)
    feed_work(settings)
    member = kafka_inbox(settings, settings.group_prefix + "work", ["work"], client_id="test-member")
    try:
        first = poll_until(member, 2)
        batch_done: Future[None] = Future()
        threading.Timer(KEEPALIVE_S * 2.5, batch_done.set_result, [None]).start()
        member.wait_paused(batch_done, keep=14)  # seven batches
        after = member.poll(0, max_records=14)
        assert [d.offset for d in after] == list(range(2, 16))  # at once, from where the batch ended
        rest = after + poll_until(member, 4)
        assert [d.offset for d in first + rest] == list(range(20))  # each once, in order
    finally:
        member.close()


def test_each_send_waits_for_its_own_acknowledgements_and_a_refused_message_fails_its_send(
    broker: LocalBroker, bus_client: str
) -> None:
    """Two sends in flight at once are each acknowledged (the worker processes a batch while the last one's
    results are acknowledged); a message the client refuses fails its send with a `BusError` and leaves the
    producer usable."""
    settings = bus_settings(broker, client=bus_client).model_copy(update={"max_message_bytes": 100_000})
    ensure_topics(settings, ["acks"], partitions=2, replication_factor=1)
    producer = kafka_bus(settings, client_id="test-acks")
    try:
        first = producer.send([RawMessage("acks", f"a{i}".encode(), b"v", []) for i in range(50)])
        second = producer.send([RawMessage("acks", f"b{i}".encode(), b"v", []) for i in range(50)])
        second.wait()
        deadline = time.monotonic() + 30
        while not first.done():  # found out without blocking, as the worker does between polls
            assert time.monotonic() < deadline, "the first send's acknowledgements never came"
            time.sleep(0.01)
        first.wait()
        with pytest.raises(BusError):
            producer.send([RawMessage("acks", b"huge", b"\x00" * 200_000, [])]).wait()
        producer.publish_raw([RawMessage("acks", b"after", b"v", [])])
    finally:
        producer.close()
    inbox = kafka_inbox(settings, settings.group_prefix + "acks", ["acks"], client_id="test-acks-reader")
    try:
        keys = {d.key for d in poll_until(inbox, 101)}
    finally:
        inbox.close()
    assert keys == {f"a{i}".encode() for i in range(50)} | {f"b{i}".encode() for i in range(50)} | {b"after"}


def test_a_topic_log_reads_what_any_writer_appended_in_one_order_up_to_the_offset_asked_for(
    broker: LocalBroker, bus_client: str
) -> None:
    """Two logs over one topic (two replicas): each reads every entry, its own and the other's, in the broker's
    order; `read(until)` reads at least up to that offset, `read()` to the end; a log opened later reads it all from
    the start."""
    settings = bus_settings(broker, client=bus_client)
    topic = settings.topic_prefix + "log"
    ensure_topics(settings, ["log"], partitions=1, replication_factor=1)
    first, second = (kafka_log(settings, topic, client_id=f"test-log-{n}") for n in (1, 2))
    try:
        assert list(first.read()) == []
        assert first.append([]) == -1
        last = first.append([(f"a{i}".encode(), b"1") for i in range(5)])
        assert last == 4
        assert second.append([(b"b0", b"2"), (b"b1", b"2")]) == 6
        expected = [*((f"a{i}".encode(), b"1") for i in range(5)), (b"b0", b"2"), (b"b1", b"2")]
        some = list(first.read(until=5))
        assert some == expected[: len(some)] and len(some) >= 5
        assert some + list(first.read()) == expected
        everything = list(second.read())
        assert everything == expected
        assert list(second.read()) == []
    finally:
        first.close()
        second.close()
    later = kafka_log(settings, topic, client_id="test-log-3")
    try:
        assert list(later.read()) == everything
    finally:
        later.close()
