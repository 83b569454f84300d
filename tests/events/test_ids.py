"""Event and run ids: time-ordered when new, stable when derived, unchanged for ids from
before time-ordered ones (a decision re-made after an upgrade keeps its id)."""

from __future__ import annotations

import time
import uuid

from aob.events.ids import (
    TIME_ORDERED_EVENT_ID,
    derived_event_id,
    new_event_id,
    new_run_id,
)


def _ms_prefix(text: str) -> int:
    return int(text[:12], 16)


def test_a_new_event_id_is_a_uuid7_beginning_with_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    made = new_event_id()
    after = time.time_ns() // 1_000_000

    assert TIME_ORDERED_EVENT_ID.fullmatch(made)
    parsed = uuid.UUID(made)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert before <= _ms_prefix(made) <= after
    assert len({new_event_id() for _ in range(10_000)}) == 10_000


def test_ids_made_later_sort_after_earlier_ones() -> None:
    earlier_events = [new_event_id() for _ in range(50)]
    earlier_runs = [new_run_id() for _ in range(50)]
    last_ms = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 <= last_ms:  # ids of one millisecond have no order
        pass
    later_event, later_run = new_event_id(), new_run_id()

    assert all(earlier < later_event for earlier in earlier_events)
    assert all(earlier < later_run for earlier in earlier_runs)


def test_a_run_id_is_run_and_the_time_and_64_random_bits() -> None:
    before = time.time_ns() // 1_000_000
    run_id = new_run_id()

    assert run_id.startswith("run_")
    assert len(run_id) == 4 + 12 + 16
    assert int(run_id[4:], 16) >= 0  # hex throughout
    assert before <= _ms_prefix(run_id[4:]) <= time.time_ns() // 1_000_000
    assert len({new_run_id() for _ in range(10_000)}) == 10_000


def test_a_derived_id_keeps_its_time_ordered_causes_time_and_is_stable() -> None:
    cause = new_event_id()
    first = derived_event_id(cause, 0)

    assert first == derived_event_id(cause, 0)  # the same decision, the same id
    assert first != derived_event_id(cause, 1)
    assert TIME_ORDERED_EVENT_ID.fullmatch(first)
    assert first[:12] == cause[:12]
    # A chain of decisions keeps the first cause's time: a run's events sort together.
    assert derived_event_id(derived_event_id(first, "x"), 3)[:12] == cause[:12]


def test_ids_from_before_derive_exactly_as_they_always_did() -> None:
    # Values computed by the derivation before time-ordered ids existed.
    assert (
        derived_event_id("71c08678-2aed-426b-a990-2843dc9b0445", 0)
        == "bb28d425-1313-264c-3dc0-7ef1d7f3a73d"
    )
    assert (
        derived_event_id("run_b0e6d530553f447bbdb3/signal/go", "k")
        == "7e0a650a-b225-265f-8cfe-391105a89b66"
    )
    # An old derived id is never taken for a time-ordered one (it has dashes): its own
    # reactions derive as before too.
    old = derived_event_id("71c08678-2aed-426b-a990-2843dc9b0445", 0)
    assert not TIME_ORDERED_EVENT_ID.fullmatch(old)
    assert derived_event_id(old, 1) == "74839c90-df90-92b6-dc6e-b47d2020e1f0"
