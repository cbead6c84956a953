"""The CLI never answers from the wrong store (issue 14, deliverable 6): `--listen` means the
server, a data directory held by `headwater serve` is answered by that serve (the address it
recorded in the directory's lock) or the command fails naming it, and no read command
creates a store."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.secure_serve import source_event

from conftest import Serve, free_port, run_headwater
from headwater.producers import GrpcTransport, Publisher
from headwater.stream_processors.store import LOCK_NAME, _DirLock, lock_holder

READS = [("sql", "SELECT 1"), ("status",), ("audit", "verify"),
         ("lineage", "openlineage", "--run", "r"), ("audit", "report", "--model", "m")]


@pytest.fixture
def two_serves(tmp_path: Path) -> Iterator[tuple[Serve, Serve]]:
    a, b = Serve(tmp_path / "a"), Serve(tmp_path / "b")
    a.start()
    try:
        b.start()
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def _sources(*args: str, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> list[str]:
    done = run_headwater("sql", "SELECT source_id FROM sources FINAL ORDER BY source_id",
                         "--format", "json", *args, env=env, **({"cwd": cwd} if cwd else {}))
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["source_id"] for line in done.stdout.splitlines()]


def test_listen_never_opens_or_creates_a_local_store(tmp_path: Path,
                                                     serve: Serve) -> None:
    """Row 11: `audit verify --listen HOST:PORT` (or `sql --listen`) in a folder without a
    store created an empty ./.headwater and reported "0 events ... intact", rc 0."""
    empty = tmp_path / "empty"
    empty.mkdir()
    nobody = f"127.0.0.1:{free_port()}"
    for args in (("audit", "verify"), ("sql", "SELECT 1")):
        done = run_headwater(*args, "--listen", nobody, cwd=empty)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert nobody in done.stderr and "intact" not in done.stdout
        assert list(empty.iterdir()) == [], args  # no ./.headwater made on the side
    # a server at --listen is what answers, still without a local store
    with Publisher(GrpcTransport(serve.target), run_id="listen-run") as pub:
        pub.publish(source_event(1))
    done = run_headwater("audit", "verify", "--json", "--listen", serve.target, cwd=empty)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["events"] >= 1
    assert _sources("--listen", serve.target, cwd=empty) == ["clinic-1"]
    assert list(empty.iterdir()) == []


def test_read_commands_never_create_a_store(tmp_path: Path) -> None:
    """Row 11 (sibling): every read command pointed at no store fails naming the path and
    creates nothing: sql, status, audit verify, lineage openlineage, audit report."""
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = tmp_path / "missing"
    for args in READS:
        done = run_headwater(*args, cwd=empty, env={"HEADWATER_DATA_DIR": ""})
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert ("no Headwater store at .headwater; pass --data-dir, --dsn or --listen"
                in done.stderr), (args, done.stderr)
        done = run_headwater(*args, "--data-dir", str(missing), cwd=empty)
        assert done.returncode == 2, (args, done.stderr)
        assert f"no Headwater store at {missing}" in done.stderr, (args, done.stderr)
        assert list(empty.iterdir()) == [] and not missing.exists(), args


def test_data_dir_held_by_serve_is_answered_by_that_serve(
        two_serves: tuple[Serve, Serve]) -> None:
    """Row 12: `sql --data-dir D` while a serve holds D was answered by whatever serve
    listened on the default port (another store)."""
    a, b = two_serves
    for serve, i in ((a, 1), (b, 2)):
        with Publisher(GrpcTransport(serve.target), run_id=f"run-{i}") as pub:
            pub.publish(source_event(i))
    # the lock records the holder's pid and address
    holder = lock_holder(a.data_dir / "clickhouse")
    assert holder == (str(a.proc.pid), a.target)
    # the "default port" is B's: D = A must still be answered by A
    env = {"HEADWATER_LISTEN": b.target}
    assert _sources("--data-dir", str(a.data_dir), env=env) == ["clinic-1"]
    assert _sources("--data-dir", str(b.data_dir), env={"HEADWATER_LISTEN": a.target}) \
        == ["clinic-2"]
    done = run_headwater("status", "--json", "--data-dir", str(a.data_dir), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["events_by_type"] == {"source_registered": 1}
    # an explicit --listen that is not D's serve is refused, naming both
    done = run_headwater("sql", "SELECT 1", "--data-dir", str(a.data_dir), "--listen", b.target)
    assert done.returncode == 2
    assert (f"--listen {b.target} is not the serve holding {a.data_dir} (pid {a.proc.pid} at "
            f"{a.target})") in done.stderr


def test_data_dir_held_by_a_silent_process_fails_naming_it(tmp_path: Path) -> None:
    """Row 12 (sibling): a holder that records no address, or whose address does not answer,
    is an error naming its pid (and address), never a fall-back to the default port."""
    data = tmp_path / "data"
    lock_dir = data / "clickhouse"
    lock = _DirLock(lock_dir)  # this test process holds the directory, as a serve would
    try:
        done = run_headwater("sql", "SELECT 1", "--data-dir", str(data))
        assert done.returncode == 2
        assert (f"data directory {data} is held by pid {os.getpid()}, which records no gRPC "
                "address") in done.stderr
        gone = f"127.0.0.1:{free_port()}"
        lock.record_address(gone)
        assert (lock_dir / LOCK_NAME).read_text() == f"{os.getpid()}\n{gone}\n"
        for args in READS[:3]:
            done = run_headwater(*args, "--data-dir", str(data))
            assert done.returncode == 2, (args, done.stdout)
            assert (f"data directory {data} is held by headwater serve pid {os.getpid()} at "
                    f"{gone}, which does not answer") in done.stderr, (args, done.stderr)
    finally:
        lock.release()
    assert lock_holder(lock_dir) is None  # released: nobody holds it
