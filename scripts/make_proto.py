"""Regenerate src/mlapi/rpc/descriptor.py from src/mlapi/rpc/inference.proto.

The server needs only the file's compiled descriptor, which protoc writes; the
message classes are built from it at import (mlapi.rpc.messages). So there is no
generated Python code to keep in step with a protobuf runtime, and nothing to
install at build time. Needs grpcio-tools (the test extra): `make proto`.

    python scripts/make_proto.py            # rewrite descriptor.py
    python scripts/make_proto.py --check    # exit 1 if descriptor.py is stale
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "mlapi/rpc/inference.proto"
TARGET = ROOT / "src" / "mlapi" / "rpc" / "descriptor.py"
HEADER = '''# ruff: noqa: E501
"""The compiled descriptor of inference.proto (a serialized FileDescriptorProto).
Written by scripts/make_proto.py from the .proto beside it: do not edit."""

# fmt: off
FILE_DESCRIPTOR = (
'''


def compile_proto() -> bytes:
    """inference.proto's FileDescriptorProto, serialized, as protoc compiles it."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "set.pb"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--proto_path={ROOT / 'src'}",
                f"--descriptor_set_out={out}",
                SOURCE,
            ],
            check=True,
        )
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    (proto,) = files
    return bytes(proto.SerializeToString(deterministic=True))


def render(data: bytes) -> str:
    lines = [f"    {data[i : i + 60]!r}\n" for i in range(0, len(data), 60)]
    return HEADER + "".join(lines) + ")\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is stale")
    args = parser.parse_args()
    text = render(compile_proto())
    if args.check:
        stale = not TARGET.exists() or TARGET.read_text() != text
        if stale:
            print(f"{TARGET.relative_to(ROOT)} is stale: run `make proto`", file=sys.stderr)
        return 1 if stale else 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
