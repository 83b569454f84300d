"""The ranges of records finished past a committed offset, as commits carry them."""

from __future__ import annotations

import pytest

from aob.events.log.done_ahead import (
    MAX_TEXT,
    decode,
    encode,
    from_position,
    gaps,
    normalized,
    without_done,
)
from aob.events.log.port import Record


def test_ranges_round_trip_merged_and_sorted() -> None:
    text = encode([range(7, 9), range(3, 5), range(5, 6), range(20, 20)])
    assert text == "done:3-6,7-9"
    assert decode(text) == (range(3, 6), range(7, 9))
    assert encode([]) == ""
    assert decode("") == ()


def test_the_text_is_bounded_and_keeps_the_earliest_ranges() -> None:
    many = [range(n * 10, n * 10 + 5) for n in range(10_000)]
    text = encode(many)
    assert len(text) <= MAX_TEXT
    kept = decode(text)
    assert kept == tuple(many[: len(kept)])
    assert len(kept) > 100


@pytest.mark.parametrize(
    "text",
    [
        "done:3",
        "done:5-3",
        "done:4-4",
        "done:-1-3",
        "done:1-2,,3-4",
        "done:1-2;3-4",
        "done:" + "9" * 30 + "-" + "9" * 31,
        "other metadata",
        "done:" + "1-2," * MAX_TEXT,
    ],
)
def test_metadata_that_is_not_ours_skips_nothing(text: str) -> None:
    assert decode(text) == ()


def test_gaps_are_what_finished_between_the_unfinished() -> None:
    assert gaps([10], 11) == ()
    assert gaps([10], 15) == (range(11, 15),)
    assert gaps([14, 10, 12], 20) == (range(11, 12), range(13, 14), range(15, 20))
    assert gaps([10, 11], 12) == ()
    assert gaps([], 12) == ()


def test_a_reader_skips_done_records_and_forgets_what_it_passed() -> None:
    records = [Record("t", 0, offset, "k", b"", 0) for offset in range(10)]
    done = normalized([range(2, 4), range(6, 12)])
    assert [r.offset for r in without_done(records, done)] == [0, 1, 4, 5]
    assert from_position(done, 7) == (range(7, 12),)
    assert from_position(done, 3) == (range(3, 4), range(6, 12))
    assert from_position(done, 12) == ()
