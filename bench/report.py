"""What a benchmark run prints and writes: the table of every run, cold starts and
memory, ratios against ml-api, the in-process limit, the goals with whether each
holds, and a chart."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from load import Pair
from targets import BARE, FASTAPI, OURS, OURS_BINARY, TARGETS


@dataclass
class Run:
    target: str
    model: str
    rows: int
    connections: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None = None  # the server's CPU time per request


@dataclass
class ServerReport:
    target: str
    model: str
    cold_start_s: float | None = None
    rss_mb: float | None = None
    problem: str | None = None
    runs: list[Run] = field(default_factory=list)


@dataclass
class Goal:
    what: str
    measured: str
    holds: bool | None  # None: not measured in this run


class Results:
    """Look-ups over one run's reports."""

    def __init__(self, reports: list[ServerReport], pairs: list[Pair]) -> None:
        self.reports = reports
        self.pairs = {(p.first, p.second, p.model, p.rows): p for p in pairs}
        self.runs = {
            (r.target, r.model, r.rows, r.connections): r for rep in reports for r in rep.runs
        }

    def run(self, target: str, model: str, rows: int, connections: int = 64) -> Run | None:
        return self.runs.get((target, model, rows, connections))

    def report(self, target: str, model: str) -> ServerReport | None:
        return next((r for r in self.reports if (r.target, r.model) == (target, model)), None)

    def pair(self, first: str, second: str, model: str, rows: int) -> Pair | None:
        return self.pairs.get((first, second, model, rows))

    def ratio(
        self, peer: str, model: str, rows: int, by: Callable[[Run], float], connections: int = 64
    ) -> float | None:
        ours, theirs = (
            self.run(OURS, model, rows, connections),
            self.run(peer, model, rows, connections),
        )
        if ours is None or theirs is None or not by(theirs):
            return None
        return by(ours) / by(theirs)


def _rps(run: Run) -> float:
    return run.requests_per_s


def goals(
    results: Results,
    limits: dict[str, float],
    cold_starts: dict[str, float],
    deployment: dict[str, float] | None,
) -> list[Goal]:
    """Every target of issues 4 and 15, measured in this run."""
    out: list[Goal] = []

    def ratio_goal(what: str, first: str, second: str, model: str, rows: int, floor: float) -> None:
        """From the alternating runs when there are some (decided on requests per CPU
        second, the throughput ratio shown beside it), else from the table."""
        pair = results.pair(first, second, model, rows)
        if pair is not None:
            value: float | None = pair.cpu_ratio
            cpu = statistics.median(pair.first_cpu_us), statistics.median(pair.second_cpu_us)
            shown = (
                f"{pair.cpu_ratio:.2f}x per CPU second ({cpu[0]:.0f} vs {cpu[1]:.0f} us a "
                f"request); throughput {pair.ratio:.2f}x ("
                f"{pair.median_rows_per_s(first):,.0f} vs {pair.median_rows_per_s(second):,.0f} "
                f"rows/s); medians of {len(pair.first_rps)} alternating runs"
            )
        else:
            ours, theirs = results.run(first, model, rows), results.run(second, model, rows)
            value = ours.rows_per_s / theirs.rows_per_s if ours and theirs else None
            shown = f"{value:.2f}x (one run each)" if value else "-"
        out.append(Goal(what, shown, None if value is None else value >= floor))

    ratio_goal("logreg 1-row, 64 conns: >= 0.9x the bare handler", OURS, BARE, "logreg", 1, 0.9)
    ratio_goal("logreg 8-row, 64 conns: >= 0.9x the bare handler", OURS, BARE, "logreg", 8, 0.9)
    ratio_goal("forest 8-row, 64 conns: >= 1.2x the bare handler", OURS, BARE, "forest", 8, 1.2)
    for peers, floor, label in (
        (("MLServer", "MLServer batched"), 4.0, "MLServer in its best configuration"),
        ((FASTAPI,), 3.0, "the FastAPI service"),
    ):
        worst = None
        for model in ("logreg", "forest"):
            for rows in (1, 8):
                ours = results.run(OURS, model, rows)
                best = max(
                    (r.requests_per_s for p in peers if (r := results.run(p, model, rows))),
                    default=None,
                )
                if ours and best:
                    value = ours.requests_per_s / best
                    worst = value if worst is None else min(worst, value)
        out.append(
            Goal(
                f">= {floor:g}x {label} (the smallest ratio over both models, 1 and 8 rows)",
                f"{worst:.1f}x" if worst else "-",
                None if worst is None else worst >= floor,
            )
        )
    ours, bare = results.run(OURS, "logreg", 1), results.run(BARE, "logreg", 1)
    if ours and bare:
        value = ours.p99_ms / bare.p99_ms
        out.append(
            Goal(
                "logreg 1-row p99 <= 1.5x the bare handler's",
                f"{ours.p99_ms:.1f} / {bare.p99_ms:.1f} ms = {value:.2f}x",
                value <= 1.5,
            )
        )
    pair = results.pair(OURS, BARE, "forest", 8)
    limit = limits.get("forest rows/s, batch 64")
    if pair and limit:
        per_cpu = 8 / (statistics.median(pair.first_cpu_us) / 1e6)
        share = per_cpu / limit
        out.append(
            Goal(
                "forest 8-row: >= 50% of the in-process batch-of-64 limit on the same core "
                f"({limit:,.0f} rows/s)",
                f"{per_cpu:,.0f} rows per CPU second = {share:.0%} (throughput "
                f"{pair.median_rows_per_s(OURS):,.0f} rows/s)",
                share >= 0.5,
            )
        )
    ratio_goal("forest 8-row: binary tensors >= 1.3x JSON", OURS_BINARY, OURS, "forest", 8, 1.3)
    single = results.run(OURS, "logreg", 1, connections=1)
    out.append(
        Goal(
            "concurrency 1: p50 <= 0.5 ms (logreg, 1 row)",
            f"{single.p50_ms:.2f} ms" if single else "- (not run: --quick)",
            None if single is None else single.p50_ms <= 0.5,
        )
    )
    if cold_starts:
        shown = ", ".join(f"{model} {value:.2f} s" for model, value in cold_starts.items())
        cold = max(cold_starts.values())
        out.append(
            Goal("cold start to /health 200 <= 1 s (median of 3 starts)", shown, cold <= 1.0)
        )
    ours_reports = [r for r in results.reports if r.target == OURS and r.rss_mb]
    if ours_reports:
        rss = max(r.rss_mb or 0 for r in ours_reports)
        out.append(Goal("RSS of one worker with a model <= 150 MB", f"{rss:.0f} MB", rss <= 150))
    if deployment:
        added = deployment["image_added_mb"]
        out.append(
            Goal(
                "production image: <= 140 MB above the base",
                f"{added:.1f} MB above a {deployment['base_mb']:.1f} MB base "
                f"({deployment['image_mb']:.1f} MB whole; the sklearn variant adds "
                f"{deployment['sklearn_added_mb']:.1f} MB)",
                added <= 140,
            )
        )
        healthy = deployment["up_to_healthy_s"]
        out.append(Goal("docker compose up -d to healthy <= 5 s", f"{healthy:.1f} s", healthy <= 5))
    else:
        out.append(Goal("production image, start to healthy", "- (no Docker engine here)", None))
    return out


def write_report(
    reports: list[ServerReport],
    pairs: list[Pair],
    limits: dict[str, float],
    cold_starts: dict[str, float],
    deployment: dict[str, float] | None,
    settings: str,
) -> tuple[str, list[Goal]]:
    results = Results(reports, pairs)
    found = goals(results, limits, cold_starts, deployment)
    lines = ["| goal | measured | holds? |", "|---|---|---|"]
    for goal in found:
        holds = {True: "yes", False: "**no**", None: "-"}[goal.holds]
        lines.append(f"| {goal.what} | {goal.measured} | {holds} |")
    lines += [
        "",
        "| server | model | rows | conns | req/s | rows/s | p50 ms | p99 ms | errors "
        "| CPU us/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        for run in report.runs:
            cpu = f"{run.cpu_us:.0f}" if run.cpu_us else "-"
            lines.append(
                f"| {run.target} | {run.model} | {run.rows} | {run.connections} | "
                f"{run.requests_per_s:,.0f} | {run.rows_per_s:,.0f} | {run.p50_ms:.2f} | "
                f"{run.p99_ms:.2f} | {run.errors} | {cpu} |"
            )
    lines += [
        "",
        "| server | model | cold start to ready (s) | RSS after load (MB) | note |",
        "|---|---|---|---|---|",
    ]
    notes = {t.name: t.notes for t in TARGETS}
    for report in reports:
        cold = f"{report.cold_start_s:.2f}" if report.cold_start_s else "-"
        rss = f"{report.rss_mb:.0f}" if report.rss_mb else "-"
        lines.append(
            f"| {report.target} | {report.model} | {cold} | {rss} | "
            f"{report.problem or notes.get(report.target, '')} |"
        )
    lines += [
        "",
        f"Ratios ({OURS} throughput / the other's, same model, rows, connections):",
        "",
        "| server | model | rows | conns | ratio |",
        "|---|---|---|---|---|",
    ]
    for target, model, rows, connections in results.runs:
        value = results.ratio(target, model, rows, _rps, connections)
        if target != OURS and value:
            lines.append(f"| {target} | {model} | {rows} | {connections} | {value:.2f}x |")
    if pairs:
        lines += [
            "",
            "Alternating runs (64 connections; each run's req/s and server CPU us a request):",
            "",
            "| first | second | model | rows | first | second | throughput | per CPU second |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for pair in pairs:
            first = ", ".join(
                f"{v:,.0f} ({c:.0f})"
                for v, c in zip(pair.first_rps, pair.first_cpu_us, strict=True)
            )
            second = ", ".join(
                f"{v:,.0f} ({c:.0f})"
                for v, c in zip(pair.second_rps, pair.second_cpu_us, strict=True)
            )
            lines.append(
                f"| {pair.first} | {pair.second} | {pair.model} | {pair.rows} | {first} | "
                f"{second} | {pair.ratio:.2f}x | {pair.cpu_ratio:.2f}x |"
            )
    lines += ["", "In-process limit on core 0 (onnxruntime, 1 thread):", ""]
    lines += [f"- {name}: {value:,.0f}" for name, value in limits.items()]
    lines += ["", settings + f"; {time.strftime('%Y-%m-%d %H:%M')}"]
    return "\n".join(lines), found


def chart(reports: list[ServerReport], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (pip install matplotlib)")
        return
    runs = [r for rep in reports for r in rep.runs if r.connections == 64]
    panels = sorted({(r.model, r.rows) for r in runs})
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for axis, (model, rows) in zip(axes[0], panels, strict=True):
        subset = sorted(
            (r for r in runs if (r.model, r.rows) == (model, rows)), key=lambda r: r.rows_per_s
        )
        axis.barh(
            [r.target for r in subset],
            [r.rows_per_s for r in subset],
            color=["tab:green" if r.target.startswith("ml-api") else "tab:gray" for r in subset],
        )
        axis.set_title(f"{model}, {rows}-row requests, 64 connections")
        axis.set_xlabel("rows/s on one core")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
