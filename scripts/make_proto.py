"""Regenerate src/mlapi/rpc/descriptor.py from the .proto files beside it
(inference.proto, health.proto).

The server needs only each file's compiled descriptor, which protoc writes; the
message classes are built from them at import (mlapi.rpc.messages). So there is no
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
# The constant in descriptor.py -> the .proto it holds, under src/.
SOURCES = {
    "INFERENCE_DESCRIPTOR": "mlapi/rpc/inference.proto",
    "HEALTH_DESCRIPTOR": "mlapi/rpc/health.proto",
}
TARGET = ROOT / "src" / "mlapi" / "rpc" / "descriptor.py"
HEADER = '''# ruff: noqa: E501
"""The compiled descriptors of inference.proto and health.proto (each a serialized
FileDescriptorProto). Written by scripts/make_proto.py from the .proto files beside
it: do not edit."""

# fmt: off
'''


def compile_proto(source: str) -> bytes:
    """The .proto's FileDescriptorProto, serialized, as protoc compiles it."""
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
                source,
            ],
            check=True,
        )
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    (proto,) = files
    return bytes(proto.SerializeToString(deterministic=True))


def render(compiled: dict[str, bytes]) -> str:
    blocks = []
    for name, data in compiled.items():
        lines = [f"    {data[i : i + 60]!r}\n" for i in range(0, len(data), 60)]
        blocks.append(f"{name} = (\n" + "".join(lines) + ")\n")
    return HEADER + "\n".join(blocks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is stale")
    args = parser.parse_args()
    text = render({name: compile_proto(source) for name, source in SOURCES.items()})
    if args.check:
        stale = not TARGET.exists() or TARGET.read_text() != text
        if stale:
            print(f"{TARGET.relative_to(ROOT)} is stale: run `make proto`", file=sys.stderr)
        return 1 if stale else 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
