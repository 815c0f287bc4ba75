"""doctor's output: a table a person reads on one screen, the JSON a CI job parses,
and the suggested values written into an env file the compose files read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mlapi.doctor import Report
from mlapi.doctor.findings import mib

_ORDER = {"fail": 0, "warn": 1, "ok": 2}


def as_json(report: Report) -> str:
    data: dict[str, Any] = {
        "findings": [finding.as_json() for finding in _sorted(report)],
        "models": [
            model.as_json() for model in (report.measured.loaded if report.measured else [])
        ],
        "suggested": report.sizing.suggested() if report.sizing else {},
    }
    return json.dumps(data, indent=2)


def _sorted(report: Report) -> list[Any]:
    return sorted(report.findings, key=lambda finding: _ORDER[finding.severity])


def as_text(report: Report) -> str:
    names = " + ".join(path.name for path in report.files)
    kind = "production" if report.production else "development/base"
    lines = [f"mlapi doctor: {names} ({kind}; merged by {report.merged_by})", ""]
    measured = report.measured
    if measured is not None:
        lines.append(
            f"models, measured on {len(measured.cpu_ids)} CPU(s) (limit {measured.cpus:g}); "
            f"server base {mib(measured.base_rss_bytes)} and {measured.import_seconds:.2f}s "
            "start per worker"
        )
        lines.append(
            f"  {'MODEL':20} {'VER':>4} {'LOAD':>8} {'WARM-UP':>8} {'PEAK':>9} {'STEADY':>9}"
            f" {'BATCH 1':>9} {'BATCH MAX':>12}"
        )
        for model in measured.loaded:
            lines.append(
                f"  {model.name[:20]:20} {model.version:>4} {model.load_seconds:7.2f}s"
                f" {model.warmup_seconds:7.2f}s {mib(model.peak_rss_bytes):>9}"
                f" {mib(model.steady_rss_bytes):>9} {_ms(model.batch_1_ms):>9}"
                f" {_ms(model.batch_max_ms) + f' @{model.max_batch_size}':>12}"
            )
        for model in measured.failed:
            lines.append(f"  {model.name[:20]:20} {model.version:>4} FAILED: {model.error}")
        ran = [f"{m.name} v{m.version}" for m in measured.models if m.ran_code]
        if ran:
            lines.append(
                f"  measuring ran the code of model.py in: {', '.join(ran)} "
                "(Python models: audit only folders you trust)"
            )
        lines.append("")
    lines.append(f"  {'':4} {'ID':28} {'SERVICE':12} MESSAGE")
    for finding in _sorted(report):
        lines.append(
            f"  {finding.severity:4} {finding.id:28} {(finding.service or '-')[:12]:12} "
            f"{finding.message}"
        )
        if finding.where:
            lines.append(f"  {'':4} {'':28} {'':12} at {finding.where}")
        if finding.fix and finding.severity != "ok":
            lines.append(f"  {'':4} {'':28} {'':12} fix: {finding.fix}")
    if report.sizing is not None:
        pairs = " ".join(f"{k}={v}" for k, v in report.sizing.suggested().items())
        lines += ["", f"suggested: {pairs}   (--write-env FILE writes them)"]
    counts = {key: sum(f.severity == key for f in report.findings) for key in _ORDER}
    lines += ["", f"{counts['fail']} fail, {counts['warn']} warn, {counts['ok']} ok"]
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}ms"


def write_env(path: Path, values: dict[str, str]) -> None:
    """Set each value in the env file, keeping its other lines; append what is new."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    left = dict(values)
    for index, line in enumerate(lines):
        match = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if match and match.group(1) in left:
            lines[index] = f"{match.group(1)}={left.pop(match.group(1))}"
    if left:
        lines.append("# sized by mlapi doctor")
        lines += [f"{key}={value}" for key, value in left.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
