"""`make mutate`: mutation testing (mutmut) of the modules that hold the rules the
README states, each against the tests that guard it, and a score per module.

    .venv/bin/python scripts/mutate.py [MODULE ...]     # default: every module below
    MUTATE_REPORT=DIR .venv/bin/python scripts/mutate.py MODULE   # + survivors' diffs

mutmut 3 copies the package into mutants/ and needs all of it importable, so each
run names the whole of src/ and keeps every file but the one under test out of the
mutation (do_not_mutate). The configuration is written to setup.cfg for the run
and removed after; mutants/ is scratch. A mutant "survives" when the module's tests
still pass with it; the score is killed / (killed + survived), timeouts counted as
killed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = ROOT / ".venv" / "bin" / "mutmut"
# module -> the tests that hold its rules (fast tiers only: a mutant runs them all)
MODULES: dict[str, list[str]] = {
    "src/mlapi/repository/config.py": [
        "tests/unit/test_repository.py",
        "tests/unit/test_model_config.py",
        "tests/unit/test_gates.py",
    ],
    "src/mlapi/repository/publish.py": [
        "tests/unit/test_publish.py",
        "tests/unit/test_repository.py",
    ],
    "src/mlapi/registry/memory.py": ["tests/unit/test_memory.py"],
    "src/mlapi/registry/rollout.py": ["tests/service/test_rollout.py"],
    "src/mlapi/repository/rollback.py": [
        "tests/unit/test_rollback_marks.py",
        "tests/unit/test_gates.py",
    ],
    "src/mlapi/repository/strategies.py": ["tests/unit/test_publish.py"],
    "src/mlapi/repository/scan.py": [
        "tests/unit/test_repository.py",
        "tests/unit/test_gates.py",
    ],
    "src/mlapi/registry/compare.py": ["tests/unit/test_gates.py"],
    "src/mlapi/serving/drift.py": ["tests/unit/test_drift.py", "tests/service/test_payloads.py"],
    "src/mlapi/drift_cli.py": ["tests/unit/test_drift.py"],
    "src/mlapi/serving/payloads.py": [
        "tests/unit/test_payloads.py",
        "tests/service/test_payloads.py",
    ],
    "src/mlapi/serving/codec.py": [
        "tests/unit/test_codec.py",
        "tests/unit/test_rpc.py",
        "tests/unit/test_tensor_checks.py",
    ],
    "src/mlapi/serving/keys.py": ["tests/unit/test_keys.py"],
    "src/mlapi/serving/access.py": ["tests/unit/test_keys.py"],
    "src/mlapi/serving/rates.py": ["tests/unit/test_rates.py"],
    "src/mlapi/rpc/status.py": ["tests/unit/test_grpc_status.py"],
    "src/mlapi/importers/checks.py": ["tests/unit/test_import_checks.py"],
    "src/mlapi/api/scoring.py": ["tests/service/test_text_scoring.py"],
    "src/mlapi/registry/versions.py": ["tests/unit/test_bake.py", "tests/unit/test_versions.py"],
}
_COUNTS = re.compile(r"🎉 (\d+) 🫥 (\d+)\s+⏰ (\d+)\s+🤔 (\d+)\s+🙁 (\d+)")


def _config(module: str, tests: list[str]) -> str:
    others = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "src" / "mlapi").rglob("*.py")
        if str(path.relative_to(ROOT)) != module
    )
    return "\n".join(
        [
            "[mutmut]",
            "source_paths = src/",
            "do_not_mutate =",
            *(f"    {other}" for other in others),
            "pytest_add_cli_args_test_selection =",
            *(f"    {test}" for test in tests),
            "pytest_add_cli_args =",
            "    -q",
            "    -p",
            "    no:cacheprovider",
            "also_copy =",
            "    tests/",
            "    scripts/",
            "",
        ]
    )


def run(module: str, tests: list[str]) -> tuple[int, int, int]:
    """(killed, timed out, survived) of one module's mutants."""
    setup = ROOT / "setup.cfg"
    assert not setup.exists(), "setup.cfg exists: mutate writes its own"
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    setup.write_text(_config(module, tests))
    try:
        done = subprocess.run(
            [str(MUTMUT), "run"], cwd=ROOT, capture_output=True, text=True, timeout=3600
        )
        if report := os.environ.get("MUTATE_REPORT"):
            _report(Path(report) / (module.replace("/", "_") + ".diff"))
    finally:
        setup.unlink()
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    found = _COUNTS.findall(done.stdout.replace("\r", "\n"))
    if not found:
        raise SystemExit(
            f"mutmut gave no counts for {module}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    killed, _skipped, timeouts, _suspicious, survived = map(int, found[-1])
    return killed, timeouts, survived


def _report(path: Path) -> None:
    """Every surviving mutant's diff, one after the other, in ``path``."""
    listed = subprocess.run(
        [str(MUTMUT), "results"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    names = [line.split(":")[0].strip() for line in listed.splitlines() if "survived" in line]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for name in names:
            shown = subprocess.run(
                [str(MUTMUT), "show", name], cwd=ROOT, capture_output=True, text=True
            ).stdout
            out.write(f"# {name}\n{shown}\n")


def main() -> int:
    chosen = sys.argv[1:] or list(MODULES)
    lines = [
        "| module | killed | of which timed out | survived | score |",
        "|---|---|---|---|---|",
    ]
    for module in chosen:
        killed, timeouts, survived = run(module, MODULES[module])
        score = (killed + timeouts) / max(1, killed + timeouts + survived)
        lines.append(f"| {module} | {killed + timeouts} | {timeouts} | {survived} | {score:.0%} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
