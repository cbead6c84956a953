"""How many messages the Kafka runner asks for per batch: the batch size, bounded by bytes."""

from __future__ import annotations

from headwater.stream_processors.kafka_runner import BATCH_BYTES, batch_count


def test_small_events_fill_the_batch_size() -> None:
    assert batch_count(8000, 1_300) == 8000
    assert batch_count(25, 1_300) == 25


def test_large_events_are_bounded_by_bytes() -> None:
    n = batch_count(8000, 66_700)  # a trainer's 64 x 512 float16 GradientBatch
    assert n == BATCH_BYTES // 66_700 and n * 66_700 <= BATCH_BYTES


def test_at_least_one_message_whatever_its_size() -> None:
    assert batch_count(8000, 10 * BATCH_BYTES) == 1
    assert batch_count(8000, 0.0) == 8000


def test_bundles_count_by_their_events() -> None:
    """A bundle (many events per message) counts as its events against the batch size."""
    assert batch_count(8000, 200_000, events_per_message=200.0) == 40
    assert batch_count(8000, 1_300, events_per_message=0.5) == 8000  # never below one
