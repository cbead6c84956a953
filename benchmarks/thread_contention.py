"""What a second thread in the trainer's process costs the trainer: a plain training step of
the 64-128-10 MLP (batch 64, one torch thread) timed alone and beside a thread that runs pure
Python, torch ops, or SHA-256 over 64 KB buffers, and beside a busy separate process — the
kinds of work the capture's publishing worker does (docs/attribution.md, the worker and the
GIL). Runs alternate; prints a table, or one JSON line with --json.

    python benchmarks/thread_contention.py [--steps 300] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch

BUSY_PROCESS = "import numpy as np\na = np.random.rand(300, 300)\nwhile True: a @ a"


def _python(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))  # bytecode: holds the GIL until the interpreter switches


def _torch(stop: threading.Event) -> None:
    a = torch.randn(64, 129)
    while not stop.is_set():
        (a @ a.T).sum()  # releases the GIL inside each op


def _hash(stop: threading.Event) -> None:
    b = bytes(65536)
    while not stop.is_set():
        hashlib.sha256(b).digest()  # releases the GIL for buffers over 2 KB


NEIGHBOURS: dict[str, Callable[[threading.Event], None] | None] = {
    "alone": None, "python thread": _python, "torch thread": _torch,
    "sha256 thread": _hash, "busy process": None}


def _trainer(steps: int) -> Callable[[], tuple[float, float]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))

    def run() -> tuple[float, float]:
        """(thread CPU ms, wall ms) per step."""
        c0, w0 = time.thread_time(), time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return ((time.thread_time() - c0) / steps * 1e3,
                (time.perf_counter() - w0) / steps * 1e3)
    return run


def _beside(name: str, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    stop = threading.Event()
    fn = NEIGHBOURS[name]
    thread = threading.Thread(target=fn, args=(stop,), daemon=True) if fn else None
    proc = (subprocess.Popen([sys.executable, "-c", BUSY_PROCESS])
            if name == "busy process" else None)
    try:
        if thread:
            thread.start()
        if proc:
            time.sleep(0.3)  # let it start computing
        return run()
    finally:
        stop.set()
        if thread:
            thread.join()
        if proc:
            proc.kill()
            proc.wait()


def measure(steps: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    run = _trainer(steps)
    run()  # warm-up
    cpu: dict[str, list[float]] = {n: [] for n in NEIGHBOURS}
    wall: dict[str, list[float]] = {n: [] for n in NEIGHBOURS}
    for _ in range(repeats):
        for name in NEIGHBOURS:
            c, w = _beside(name, run)
            cpu[name].append(c)
            wall[name].append(w)
    base = statistics.median(cpu["alone"])
    return {"steps": steps, "repeats": repeats, "load": list(os.getloadavg()), "rows": [
        {"neighbour": n, "cpu_ms": statistics.median(cpu[n]),
         "wall_ms": statistics.median(wall[n]),
         "cpu_ratio": statistics.median(cpu[n]) / base} for n in NEIGHBOURS]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per timed run")
    ap.add_argument("--repeats", type=int, default=5, help="alternating runs per neighbour")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        ap.error("--steps and --repeats must be >= 1")
    result = measure(args.steps, args.repeats)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"plain step of a 64-128-10 MLP, batch 64, 1 torch thread; medians of "
          f"{args.repeats} runs of {args.steps} steps; load {result['load'][0]:.2f}")
    for r in result["rows"]:
        print(f"  {r['neighbour']:14s} trainer CPU {r['cpu_ms']:.3f} ms ({r['cpu_ratio']:.2f}x)"
              f"  wall {r['wall_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
