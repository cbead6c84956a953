"""Regenerate the committed Python code for the wire contract (`make proto`).

Usage: python proto/generate.py [OUT_DIR]   (default: proto/, next to the .proto files)
The no-diff test calls `generate()` into a temporary folder and compares the files.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted((PROTO_ROOT / "headwater" / "v1").glob("*.proto"))


def generate(out_dir: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) over every v1 .proto; return the files written."""
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    out = str(out_dir)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in PROTO_FILES],
    ]
    import os

    cwd = os.getcwd()
    os.chdir(PROTO_ROOT)  # relative names keep absolute paths out of the generated code
    try:
        rc = protoc.main(args)
    finally:
        os.chdir(cwd)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    return sorted((out_dir / "headwater" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    for path in generate(target):
        print(path)
