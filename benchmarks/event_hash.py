"""What the canonical event hash costs (docs/wire-contract.md), side by side in one run with
the hash it replaces (SHA-256 over Python protobuf's deterministic bytes): per event, for a
source without labels, a source with labels (the one case encoded by hand) and a gradient
batch. Prints one JSON line.

    python benchmarks/event_hash.py [--repeat 5] [--number 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import timeit
from collections.abc import Callable
from functools import partial

import numpy as np

from headwater.producers.envelope import EnvelopeBuilder, event_hash, hash_matches
from headwater.v1 import events_pb2


def upb_hash(event: events_pb2.Event) -> bytes:
    """The hash before the canonical form was written down (the old event_hash, verbatim)."""
    stored = event.hash
    event.ClearField("hash")
    try:
        return hashlib.sha256(event.SerializeToString(deterministic=True)).digest()
    finally:
        if stored:
            event.hash = stored


def cases() -> dict[str, events_pb2.Event]:
    builder = EnvelopeBuilder("bench-hash", "p")
    plain = events_pb2.SourceRegistered(source_id="s", uri="file:///s", content_sha256="0" * 64)
    labelled = events_pb2.SourceRegistered()
    labelled.CopyFrom(plain)
    labelled.labels.update({"team": "a", "owner": "b", "te": "c"})
    gradients = events_pb2.GradientBatch(
        model_id="m", model_version="v", step=1, dim=512,
        gradients=np.ones((64, 512), "<f2").tobytes(), loss=[0.5] * 64)
    return {"source": builder.wrap(plain), "source_3_labels": builder.wrap(labelled),
            "gradient_batch_64x512_f16": builder.wrap(gradients)}


def _micros(call: Callable[[], object], number: int, repeat: int) -> float:
    """Best of `repeat` timings, in microseconds per call."""
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=20000, help="calls per timing "
                        "(a tenth for the gradient batch)")
    args = parser.parse_args()
    results = []
    for name, event in cases().items():
        n = args.number // 10 if name.startswith("gradient") else args.number
        old, new, check = (_micros(partial(f, event), n, args.repeat)
                           for f in (upb_hash, event_hash, hash_matches))
        results.append({"event": name, "upb_hash_us": round(old, 2),
                        "canonical_hash_us": round(new, 2), "ratio": round(new / old, 2),
                        "verify_us": round(check, 2), "verified": hash_matches(event)})
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
