"""libFuzzer (atheris) harness over the event decoder, the validator and the pure processors.

    .venv/bin/pip install atheris          # not a declared dependency: optional tool
    python benchmarks/fuzz_decoder_atheris.py [--seconds 60] [--corpus DIR] [libFuzzer flags]

Each input is one record as the sink receives it. Property: `decode_record` returns
Accepted or Rejected (never raises), a rejection carries a reason, and an accepted event
goes through every pure processor (the rows written to ClickHouse) without raising. The
corpus starts with a valid event of every payload type, so mutations reach the payload
checks; every decodable input is also checked re-hashed (a mutation almost always breaks
the hash, which would stop it before the payload checks). A crash leaves libFuzzer's
crash-* file with the input in the working directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

try:
    import atheris
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("atheris is not installed: `.venv/bin/pip install atheris` (needs a manylinux "
             "x86_64/aarch64 wheel or clang with libFuzzer)")

with atheris.instrument_imports():
    from headwater.producers.transports.base import Record
    from headwater.stream_processors.processors.decode import Accepted, Rejected, decode_record
    from headwater.stream_processors.processors.derived import DERIVED
    from headwater.stream_processors.processors.rows import event_rows

from headwater.producers.envelope import EnvelopeBuilder, event_hash  # noqa: E402
from headwater.v1 import events_pb2  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def seeds() -> list[bytes]:
    """One valid encoded event of every payload type."""
    b = EnvelopeBuilder("fuzz-run", "fuzz-producer")
    grads = np.linspace(-1, 1, 8).astype("<f4").tobytes()
    payloads = [
        events_pb2.SourceRegistered(source_id="s", uri="file:///a.csv", content_sha256="ab" * 32,
                                    schema=[events_pb2.Column(name="a", dtype="int64")],
                                    labels={"k": "v"}, node_id="n"),
        events_pb2.OpRecorded(op_id="o", op_name="numpy.take", input_node_ids=["n"],
                              output_node_id="m", row_map=events_pb2.RowMap(
                                  output_rows=2, segments=[events_pb2.RowSegment(
                                      input=0, out_start=0, length=2,
                                      range=events_pb2.RowRange(start=0, step=1))])),
        events_pb2.ModelVersionRecorded(model_id="m", version="m@1"),
        events_pb2.GradientBatch(model_id="m", model_version="m@1", dim=4,
                                 dtype=events_pb2.FLOAT32, gradients=grads,
                                 row_keys=events_pb2.RowKeys(node_ids=["n"], rows=[0, 1]),
                                 loss_weight=[0.5, 0.5], curvature_weight=[0.2, 0.2]),
        events_pb2.PredictionRecorded(prediction_id="p", model_id="m", model_version="m@1",
                                      output=[0.5], dim=4, dtype=events_pb2.FLOAT32,
                                      test_gradients=grads[:16], gradient_labels=["1"]),
        events_pb2.ForgetRequested(request_id="r", target=events_pb2.ForgetTarget(
            source_ids=["s"]), model_id="m"),
        events_pb2.UnlearningApplied(request_id="r", model_id="m",
                                     status=events_pb2.UnlearningApplied.APPLIED),
    ]
    return [b.wrap(p).SerializeToString(deterministic=True) for p in payloads]


def test_one_input(data: bytes) -> None:
    check(data)
    # Nearly every mutation breaks the hash; re-hash a decodable event so that the
    # payload checks and the processors see the mutated content too.
    event = events_pb2.Event()
    try:
        event.ParseFromString(data)
    except Exception:  # noqa: BLE001 - undecodable: check() covered it
        return
    event.hash = event_hash(event)
    check(event.SerializeToString())


def check(data: bytes) -> None:
    result = decode_record(0, Record(data))
    if isinstance(result, Rejected):
        if not result.error.strip():
            raise AssertionError("rejected without a reason")
        return
    if not isinstance(result, Accepted):
        raise AssertionError(f"decode_record returned {type(result).__name__}")
    for processor in DERIVED.values():
        processor([result])
    event_rows([result], "fuzz", NOW)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60, help="fuzzing time (60)")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="corpus directory (default: a temporary one with the seeds)")
    args, libfuzzer = ap.parse_known_args(argv)
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="headwater-fuzz-corpus-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}", *libfuzzer, str(corpus)],
                  test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
