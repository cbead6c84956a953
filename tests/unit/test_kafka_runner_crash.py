"""The Kafka runner ends (HeadwaterError) when faust's app or consumer crashed, rather than
staying up consuming nothing; a stop ends the wait quietly."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from headwater.errors import HeadwaterError
from headwater.stream_processors.kafka_runner import KafkaRunner


def _runner() -> KafkaRunner:
    return KafkaRunner(sink=None, bootstrap="127.0.0.1:9", topic="t", group="g")  # type: ignore[arg-type]


def _service(crashed: bool = False, reason: BaseException | None = None) -> SimpleNamespace:
    return SimpleNamespace(crashed=crashed, crash_reason=reason)


async def _wait(runner: KafkaRunner, app: SimpleNamespace, crash_after: float | None) -> None:
    if crash_after is not None:
        async def crash() -> None:
            await asyncio.sleep(crash_after)
            app.consumer.crashed, app.consumer.crash_reason = True, OSError("broker gone")
        asyncio.ensure_future(crash())
    await runner._until_stopped_or_crashed(app)


def test_a_consumer_crash_ends_the_member_naming_the_reason() -> None:
    app = SimpleNamespace(crashed=False, crash_reason=None, consumer=_service())
    with pytest.raises(HeadwaterError, match="Kafka consumer stopped: OSError.'broker gone'"):
        asyncio.run(asyncio.wait_for(_wait(_runner(), app, 0.2), timeout=5))


def test_an_app_crash_ends_the_member() -> None:
    app = SimpleNamespace(crashed=True, crash_reason=RuntimeError("x"), consumer=_service())
    with pytest.raises(HeadwaterError, match="RuntimeError"):
        asyncio.run(asyncio.wait_for(_wait(_runner(), app, None), timeout=5))


def test_a_stop_ends_the_wait_without_error() -> None:
    runner = _runner()
    app = SimpleNamespace(crashed=False, crash_reason=None, consumer=_service())

    async def main() -> None:
        threading.Timer(0.2, runner.stop).start()  # from another thread, as signals do
        await runner._until_stopped_or_crashed(app)

    asyncio.run(asyncio.wait_for(main(), timeout=5))
    assert runner.stop_event.is_set()
