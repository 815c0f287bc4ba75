"""``mlapi drift MODEL``: how far what a model was asked (and answered) has moved from
its reference, read from the payload log's files (on the host from a copied logs
folder, or in the container). Per feature: the PSI (the server's bins: the
reference's deciles), the two-sample Kolmogorov-Smirnov statistic and its p-value
(Smirnov's asymptotic distribution), the mean's shift (also in the reference's
standard deviations) and the quartiles' shifts; the features that moved most
first. Exit 1 when a feature's PSI passes ``--threshold`` (a cron job or CI can act),
0 otherwise, 2 on bad input.

The reference: the version's ``reference.npz`` in the repository (``--model-path``),
else the one the server saved from its first live requests
(``<logs>/drift/<model>-v<N>.reference.npz``). A record whose tensors were cut
(``[logging] max_elements``) or redacted does not count toward its feature."""

from __future__ import annotations

import calendar
import json
import math
import re
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlapi.errors import ConfigError
from mlapi.serving.drift import Feature, features_of, psi

_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def main(args: Namespace) -> int:
    logs = Path(args.logs)
    records = _records(logs / "payloads" / args.model, _since(args.since))
    version = args.version or max((r["version"] for r in records), default=None)
    if version is None:
        raise ConfigError(f"no payload records of '{args.model}' under {logs / 'payloads'}")
    records = [r for r in records if r["version"] == version]
    reference = _reference(args.model, version, logs, args.model_path)
    live_inputs = _tensors(records, "inputs")
    live_outputs = _tensors(records, "outputs")
    ref_outputs = {
        n.removeprefix("output:"): a for n, a in reference.items() if n.startswith("output:")
    }
    ref_inputs = {n: a for n, a in reference.items() if not n.startswith("output:")}
    rows = []
    for tensors, live, prefix in (
        (ref_inputs, live_inputs, ""),
        (ref_outputs, live_outputs, "output:"),
    ):
        for feature, tensor, column in features_of(tensors, prefix, args.max_features):
            if tensor not in live:
                continue
            old = _column(tensors[tensor], column)
            new = _column(live[tensor], column)
            rows.append(_compare(feature, old, new))
    rows.sort(key=lambda row: -row["psi"])
    drifted = [row["feature"] for row in rows if row["psi"] > args.threshold]
    report = {
        "model": args.model,
        "version": version,
        "requests": len(records),
        "threshold": args.threshold,
        "drifted": drifted,
        "features": rows,
    }
    if args.format == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(_text(report))
    return 1 if drifted else 0


def _since(text: str | None) -> float:
    if not text:
        return 0.0
    relative = _SINCE.fullmatch(text)
    if relative:
        return time.time() - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        return _utc(text)
    except ValueError:
        raise ConfigError(f"--since {text!r}: a time such as 2026-12-06T08:00:00 or 2h") from None


def _records(folder: Path, since: float) -> list[dict[str, Any]]:
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line cut by a full disk
            if record.get("status") == 200 and _epoch(record.get("time", "")) >= since:
                records.append(record)
    return records


def _epoch(stamp: str) -> float:
    try:
        return _utc(stamp)
    except ValueError:
        return 0.0


def _utc(stamp: str) -> float:
    """Seconds since the epoch of a UTC time written 2026-12-06T08:00:00 (what follows
    the seconds is ignored). UTC whatever the machine's zone and its summer time."""
    return float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))


def _tensors(records: list[dict[str, Any]], part: str) -> dict[str, np.ndarray]:
    """Each tensor's rows over the records (whole ones only: not cut, not redacted)."""
    found: dict[str, list[np.ndarray]] = {}
    for record in records:
        for name, tensor in (record.get(part) or {}).items():
            if "data" not in tensor or tensor.get("truncated"):
                continue
            try:
                array = np.asarray(tensor["data"]).reshape(tensor["shape"])
            except ValueError:
                continue
            found.setdefault(name, []).append(array if array.ndim else array.reshape(1))
    stacked = {}
    for name, arrays in found.items():
        try:
            stacked[name] = np.concatenate(arrays)
        except ValueError:
            continue
    return stacked


def _reference(
    model: str, version: int, logs: Path, model_path: str | None
) -> dict[str, np.ndarray]:
    candidates = [logs / "drift" / f"{model}-v{version}.reference.npz"]
    if model_path:
        candidates.insert(0, Path(model_path) / model / str(version) / "reference.npz")
    for path in candidates:
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as saved:
                    return {name: saved[name] for name in saved.files}
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path} is not a readable .npz ({type(exc).__name__})") from None
    raise ConfigError(
        f"no reference for {model} v{version}: give --model-path (its reference.npz) or the "
        f"logs folder the server saved it in"
    )


def _column(array: np.ndarray, column: int | None) -> np.ndarray:
    return array.reshape(-1) if column is None else array[:, column]


def _compare(name: str, old: np.ndarray, new: np.ndarray) -> dict[str, Any]:
    feature = Feature(name, old)
    row: dict[str, Any] = {
        "feature": name,
        "psi": round(psi(feature.reference, feature.count(new)), 4),
    }
    if feature.edges is None:  # categories: the PSI says it
        return row
    a = old.astype(np.float64)
    b = new.astype(np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not a.size or not b.size:
        return row
    statistic, p_value = ks_2samp(a, b)
    spread = float(np.std(a)) or 1.0
    row.update(
        ks=round(statistic, 4),
        ks_p=float(f"{p_value:.4g}"),
        mean_shift=round(float(np.mean(b) - np.mean(a)), 6),
        mean_shift_sd=round(float(np.mean(b) - np.mean(a)) / spread, 3),
        quartile_shifts=[
            round(float(np.quantile(b, q) - np.quantile(a, q)), 6) for q in (0.25, 0.5, 0.75)
        ],
    )
    return row


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic (the largest gap between the two
    empirical distribution functions) and its two-sided p-value by Smirnov's
    asymptotic distribution, Q(x) = 2 sum (-1)^(k-1) exp(-2 k^2 x^2), at
    x = D (e + 0.12 + 0.11 / e), e = sqrt(nm/(n+m)) (Stephens' correction for small
    samples; within 5% of scipy's ks_2samp for a hundred values or more each)."""
    a, b = np.sort(a), np.sort(b)
    values = np.concatenate([a, b])
    gap = np.abs(
        np.searchsorted(a, values, side="right") / a.size
        - np.searchsorted(b, values, side="right") / b.size
    )
    statistic = float(gap.max())
    root = math.sqrt(a.size * b.size / (a.size + b.size))
    x = statistic * (root + 0.12 + 0.11 / root)  # Stephens' small-sample correction
    if x < 0.2:
        return statistic, 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return statistic, min(1.0, max(0.0, 2 * total))


def _text(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']} v{report['version']}: {report['requests']:,} requests; "
        f"PSI over {report['threshold']:g}: {', '.join(report['drifted']) or 'none'}",
        f"{'feature':<28} {'PSI':>8} {'KS':>7} {'KS p':>9} {'mean shift':>12} {'in sd':>7}",
    ]
    for row in report["features"]:
        numbers = ""
        if "ks" in row:  # a numeric feature (a category's PSI says it all)
            numbers = (
                f" {row['ks']:>7.4f} {row['ks_p']:>9.3g} {row['mean_shift']:>12.4g}"
                f" {row['mean_shift_sd']:>7.2f}"
            )
        lines.append(f"{row['feature'][:28]:<28} {row['psi']:>8.4f}{numbers}")
    return "\n".join(lines) + "\n"
