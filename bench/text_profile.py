"""Where ml-api's CPU goes while it serves embeddings at 32 sentences a request (the
load of bench/text.py --peers, one core, one thread): py-spy samples the server for
15 s and each sample is put in one bucket by its stack. Needs py-spy
(`.venv/bin/pip install py-spy`; a measuring tool, not a dependency).

    .venv/bin/python bench/text_profile.py [--int8]"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import text_peers  # noqa: E402

BUCKETS = (  # the first that a stack holds names it
    ("onnxruntime_inference_collection", "the encoder (onnxruntime session.run)"),
    ("mlapi/runtimes/text.py", "the runtime's own work (tokenizing, padding, pooling)"),
    ("orjson", "the JSON answer"),
    ("mlapi/api/openai.py", "the JSON answer"),
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--int8", action="store_true", help="the int8 import instead")
    args = parser.parse_args()
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.is_file():
        raise SystemExit("install py-spy first: .venv/bin/pip install py-spy")
    peer = text_peers.peers(HERE / "results" / "text-models")[1 if args.int8 else 0]
    texts = text_peers.sentences()
    server = text_peers.Running(peer)
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        try:
            server.run(texts, 32, 5)  # warm-up
            command = [str(spy), "record", "-p", str(server.process.pid), "-d", "15"]
            command += ["-r", "200", "--format", "raw", "--nonblocking", "-o", out.name]
            record = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            load = server.run(texts, 32, 17)
            record.wait(timeout=120)
        finally:
            server.stop()
        counts: collections.Counter[str] = collections.Counter()
        for line in Path(out.name).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            name = next(
                (b for key, b in BUCKETS if key in stack), "the rest (HTTP, plane, batcher)"
            )
            counts[name] += int(count)
    total = sum(counts.values())
    print(f"{peer.name}, 32 sentences a request: {load['per_cpu_s']:.0f} sentences per CPU second")
    for bucket, samples in counts.most_common():
        print(f"  {100 * samples / total:5.1f}%  {bucket}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
