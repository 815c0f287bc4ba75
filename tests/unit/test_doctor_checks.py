"""doctor's checks, one rule at a time: the guide's deployment broken that way gives
the finding with its severity; the same deployment as the guide has it does not
(its own merge; tests/e2e/test_doctor.py shows Docker Compose's merge agrees)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlapi import doctor
from mlapi.doctor import report as doctor_report
from tests.fixtures.compose import CASES, HOST_BYTES, Case, case_id, measured, write_project

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}


def audit(files: list[Path], case: Case, broken: bool) -> doctor.Report:
    options = doctor.Options(files=tuple(files), use_compose=False)
    deployment, merged_by = doctor.read(options, ENV)
    numbers = measured(case.measured_load_s, case.model_error if broken else None)
    return doctor.audit(deployment, merged_by, numbers, HOST_BYTES)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_each_broken_rule_is_named_and_gone_once_fixed(case: Case, tmp_path: Path) -> None:
    broken = audit(write_project(tmp_path / "broken", case, broken=True), case, True)
    named = [f for f in broken.findings if f.id == case.id and f.severity == case.severity]
    assert named, [(f.id, f.severity, f.message) for f in broken.findings]
    assert all(f.message and f.severity in ("fail", "warn", "ok") for f in broken.findings)
    if case.severity == "fail":
        assert broken.failed
        assert named[0].fix, "a fail says what to set"
    fixed = audit(write_project(tmp_path / "fixed", case, broken=False), case, False)
    left = [(f.id, f.severity, f.message) for f in fixed.findings if f.severity != "ok"]
    assert left == [], left


def test_the_numbers_behind_the_sizing_findings(tmp_path: Path) -> None:
    """370 MiB needed on two workers (2 x (60 server + 80 model + 10 transient) + 70
    supervisor); 640 MiB suggested (x 1.15 + room for an update of the model per
    worker, rounded up to 64 MiB); start (2 x 0.3 s imports + 10.1 s) x 2 = 22 s."""
    case = CASES[0]
    files = write_project(tmp_path, case, broken=False)
    report = audit(files, case, False)
    assert report.sizing is not None
    assert report.sizing.need_bytes == 370 << 20
    assert report.sizing.suggested() == {
        "ML_API_START_PERIOD": "22s",
        "ML_API_MEMORY": "640m",
        "ML_API_CPUS": "2",
        "WORKERS": "2",
    }


def test_a_small_host_gets_fewer_workers(tmp_path: Path) -> None:
    case = CASES[0]
    deployment, merged_by = doctor.read(
        doctor.Options(files=tuple(write_project(tmp_path, case, broken=False)), use_compose=False),
        ENV,
    )
    report = doctor.audit(deployment, merged_by, measured(), host_bytes=500 << 20)
    assert report.sizing is not None and report.sizing.workers == 1
    assert [f.severity for f in report.findings if f.id == "memory.over_host"] == ["fail"]


def test_write_env_sets_the_values_and_keeps_the_rest(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# mine\nAPI_PORT=8100\nML_API_MEMORY=1g\nexport WORKERS=4\n")
    doctor_report.write_env(env, {"ML_API_MEMORY": "640m", "WORKERS": "2", "ML_API_CPUS": "2"})
    assert env.read_text().splitlines() == [
        "# mine",
        "API_PORT=8100",
        "ML_API_MEMORY=640m",
        "WORKERS=2",
        "# sized by mlapi doctor",
        "ML_API_CPUS=2",
    ]


@pytest.mark.parametrize(
    ("period", "interval", "retries", "severity"),
    [("12s", "2s", 5, "ok"), ("12s", "1s", 5, "fail"), ("12s", "2s", 4, "fail")],
)
def test_the_health_window_is_start_period_plus_interval_times_retries(
    tmp_path: Path, period: str, interval: str, retries: int, severity: str
) -> None:
    """The measured start is 10.7 s: the window must be 21.4 s. 12 s + 2 s x 5 = 22 s
    is enough; one second less of interval, or one retry less, is not (issue 22's
    review: a window of start_period alone survived the tests)."""
    from tests.fixtures.compose import Case, _set

    def edit(data: dict[str, object]) -> None:
        for key, value in (("start_period", period), ("interval", interval), ("retries", retries)):
            _set("healthcheck", key, value=value)(data)

    case = Case("healthcheck.start_period", severity, edit)
    report = audit(write_project(tmp_path, case, broken=True), case, False)
    (finding,) = [f for f in report.findings if f.id == "healthcheck.start_period"]
    window = 12 + int(interval[:-1]) * retries
    assert finding.severity == severity
    assert finding.message.startswith(
        f"start_period 12s + interval {interval} x retries {retries} = {window}s; "
        "measured start 10.7s under 2 CPUs"
    )


def test_on_demand_models_count_the_hot_set_and_the_largest_beside_it(tmp_path: Path) -> None:
    """One eager model (80 MiB) and ten on-demand ones of 50 to 140 MiB, one of them
    pinned (100 MiB): a worker holds the server (60), the hot set (80 + 100) and the
    largest evictable one (140) with the largest transient (10) = 390 MiB; on two
    workers with the supervisor (70): 850 MiB. Their loads are not in the start."""
    from dataclasses import replace

    from mlapi.doctor import sizing

    MIB = 1 << 20

    base = measured()
    eager = base.models[0]
    on_demand = [
        replace(
            eager,
            name=f"od{i}",
            steady_rss_bytes=(60 + 50 + 10 * i) * MIB,
            peak_rss_bytes=(60 + 50 + 10 * i) * MIB,
            load_seconds=100.0,
            on_demand=True,
            pinned=i == 5,
        )
        for i in range(10)
    ]
    many = replace(base, models=[eager, *on_demand])
    assert sizing.hot_bytes(many) == (80 + 100) * MIB
    assert sizing.need_bytes(many, 2) == 850 * MIB
    assert sizing.start_seconds(many, 2, 2.0) == sizing.start_seconds(base, 2, 2.0)
    # a worker's share of 2 GiB less 102 MiB kept free and the 70 MiB supervisor is
    # 938 MiB: 938 - 60 - 180 - 10 = 688 MiB for the cache; the median evictable model
    # is 90 MiB: 7 at once (one worker: 1,946 - 60 - 180 - 10 = 1,696: all nine)
    assert sizing.cache_capacity(many, 2, 2 << 30) == 7
    assert sizing.cache_capacity(many, 1, 2 << 30) == 9
    assert sizing.cache_capacity(base, 2, 2 << 30) == 0  # no on-demand model
    case = CASES[0]
    files = write_project(tmp_path, case, broken=False)
    deployment, merged_by = doctor.read(doctor.Options(files=tuple(files), use_compose=False), ENV)
    report = doctor.audit(deployment, merged_by, many, host_bytes=HOST_BYTES)
    (fit,) = [f for f in report.findings if f.id.startswith("memory.limit")]
    assert "hot set (eager and pinned) 180 MiB + the largest on-demand model 140 MiB" in (
        fit.message
    )
    assert "on-demand models at once" in fit.message
    # 950 MiB: over the need (850), but each worker's cache holds one model: warned
    # ((950 - 64 - 70) / 2 = 408; 408 - 60 - 180 - 10 = 158 for the cache)
    from dataclasses import replace as changed

    from mlapi.doctor import checks_sizing
    from mlapi.doctor.findings import Sources

    (service,) = [s for s in deployment.services.values() if s.name == fit.service]
    small = checks_sizing.memory(
        changed(service, memory=950 * MIB), Sources(deployment.files), many, HOST_BYTES, 0
    )
    assert [(f.id, f.severity) for f in small if f.id.startswith("memory.")] == [
        ("memory.cache_small", "warn")
    ]
    assert "holds about 1 of the 9" in small[-1].message
