"""A pytest launcher for mutation runs: cosmic-ray starts one test command per mutant, and a
fresh interpreter spends most of its time importing NumPy, pytest and the store client.

`serve SOCKET` imports those libraries once (never `headwater` or the tests) and, per
request, forks a child that runs `pytest.main(argv)`; the child imports the project's
modules from disk, so it sees the mutated file. `run SOCKET TIMEOUT -- ARGS` is the test
command cosmic-ray calls: it prints the child's output and exits with pytest's status (124
when the child ran past TIMEOUT seconds and was killed).
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import socket
import sys
import tempfile
import time

# Imported before forking; each is optional (the server runs without those absent).
PRELOAD = ("numpy", "pytest", "_pytest.python", "_pytest.fixtures", "hypothesis",
           "hypothesis.strategies", "pyarrow", "google.protobuf", "grpc", "pydantic",
           "pydantic_settings", "cryptography", "clickhouse_connect", "jsonschema",
           "sklearn.linear_model", "torch", "_hypothesis_pytestplugin", "pytest_timeout")
TIMED_OUT = 124
TIMEOUT_MARK = "mutant killed: its tests ran past the timeout of"  # read by mutate.py


def _child(argv: list[str], cwd: str, out: str) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(cwd)
    sys.path[:0] = [cwd]
    code = 3
    try:
        import pytest

        code = int(pytest.main(argv))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _one(conn: socket.socket) -> None:
    request = json.loads(conn.makefile("rb").readline())
    with tempfile.NamedTemporaryFile(prefix="mutant-", suffix=".log", delete=False) as f:
        out = f.name
    pid = os.fork()
    if pid == 0:
        conn.close()
        _child(request["argv"], request["cwd"], out)
    deadline = time.monotonic() + float(request["timeout"])
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = TIMED_OUT
        else:
            time.sleep(0.02)
    with open(out, errors="replace") as f:
        text = f.read()
    os.unlink(out)
    conn.sendall(json.dumps({"code": status, "output": text}).encode() + b"\n")


def serve(path: str) -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    assert not any(m == "headwater" or m.startswith(("headwater.", "tests"))
                   for m in sys.modules), "the server must not import the code under test"
    gc.freeze()  # the children's collections skip the preloaded heap
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            _one(conn)


def run(path: str, timeout: float, argv: list[str]) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall(json.dumps({"argv": argv, "cwd": os.getcwd(),
                                 "timeout": timeout}).encode() + b"\n")
        answer = json.loads(conn.makefile("rb").readline())
    sys.stdout.write(answer["output"])
    if answer["code"] == TIMED_OUT:  # pytest's own codes are 0-5
        sys.stdout.write(f"\n{TIMEOUT_MARK} {timeout:.0f} s\n")
    return int(answer["code"])


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif sys.argv[1] == "run" and sys.argv[4] == "--":
        sys.exit(run(sys.argv[2], float(sys.argv[3]), sys.argv[5:]))
    else:
        sys.exit("usage: forkserver.py serve SOCKET | run SOCKET TIMEOUT -- PYTEST-ARGS")
