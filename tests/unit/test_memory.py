"""The memory check before a version loads (issue 9): where the limit and the use
come from (cgroup v2, cgroup v1, the host, MLAPI_MEMORY_LIMIT), what a version
needs (memory_mb, the last measurement, its files), and the refusal's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlapi.errors import ConfigError, InsufficientMemory
from mlapi.registry import memory
from mlapi.registry.memory import MIB, MemoryBudget
from mlapi.repository.config import ModelConfig, parse
from mlapi.settings import load_settings

V1_UNLIMITED = "9223372036854771712"  # what cgroup v1 writes when no limit is set


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_limit_and_use_without_reclaimable_cache(tmp_path: Path) -> None:
    root = _files(
        tmp_path,
        {
            "memory.max": "536870912\n",
            "memory.current": str(300 * MIB) + "\n",
            "memory.stat": f"anon {200 * MIB}\nfile {100 * MIB}\ninactive_file {80 * MIB}\n",
        },
    )
    assert memory.cgroup_limit(root) == 512 * MIB
    assert memory.cgroup_used(root) == 220 * MIB


def test_cgroup_v1_limit_and_use(tmp_path: Path) -> None:
    root = _files(
        tmp_path,
        {
            "memory/memory.limit_in_bytes": str(1 << 30),
            "memory/memory.usage_in_bytes": str(400 * MIB),
            "memory/memory.stat": f"cache 1\ntotal_inactive_file {150 * MIB}\n",
        },
    )
    assert memory.cgroup_limit(root) == 1 << 30
    assert memory.cgroup_used(root) == 250 * MIB


@pytest.mark.parametrize(
    "files",
    [
        {"memory.max": "max\n"},
        {"memory/memory.limit_in_bytes": V1_UNLIMITED},
        {},
    ],
    ids=["v2 max", "v1 unlimited", "no cgroup files"],
)
def test_no_cgroup_limit_is_none(tmp_path: Path, files: dict[str, str]) -> None:
    assert memory.cgroup_limit(_files(tmp_path, files)) is None


def test_the_host_is_total_less_available(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  4194304 kB\nMemFree: 1 kB\nMemAvailable:  1048576 kB\n")
    assert memory.host_memory(meminfo) == (4 << 30, 3 << 30)


def _version(tmp_path: Path, size: int) -> Path:
    folder = tmp_path / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\0" * size)
    return folder


def test_what_a_version_needs_memory_mb_then_the_last_measurement_then_its_files(
    tmp_path: Path,
) -> None:
    folder = _version(tmp_path, 3 * MIB)
    cache = tmp_path / "cache"
    cache.mkdir()
    budget = MemoryBudget(None, workers=1, cache_dir=cache)
    assert budget.need(folder, ModelConfig(), "abc") == (9 * MIB, "estimated from its files")
    budget.remember("abc", 10 * MIB)
    # the measurement is kept in the cache folder: a restarted server reads it
    again = MemoryBudget(None, workers=1, cache_dir=cache)
    assert again.need(folder, ModelConfig(), "abc") == (10 * MIB, "measured at its last load")
    assert again.need(folder, ModelConfig(), "other files")[1] == "estimated from its files"
    # a load that reused freed memory reads low: never less than the files
    again.remember("abc", 1 * MIB)
    assert again.need(folder, ModelConfig(), "abc") == (3 * MIB, "measured at its last load")
    declared = parse({"memory_mb": 700})
    assert again.need(folder, declared, "abc") == (700 * MIB, "memory_mb in model.toml")


def test_a_version_that_does_not_fit_is_refused_with_both_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "resident_bytes", lambda: 100 * MIB)
    folder = _version(tmp_path, 1)
    budget = MemoryBudget(1 << 30, workers=2, cache_dir=None)
    # 1024 MiB less 2 x 100 in use less 64 kept free: 760 MiB left for 2 copies
    budget.check(folder, parse({"memory_mb": 380}), "")
    with pytest.raises(InsufficientMemory) as refused:
        budget.check(folder, parse({"memory_mb": 381}), "")
    message = str(refused.value)
    assert "needs about 762 MiB (2 workers x 381 MiB), from memory_mb in model.toml" in message
    assert "760 MiB is left under the memory limit of 1,024 MiB" in message
    assert "(200 MiB in use, 64 MiB kept free)" in message


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("536870912", 512 * MIB),
        ("512m", 512 * MIB),
        ("2g", 2 << 30),
        ("1.5G", 3 << 29),
        ("256MiB", 256 * MIB),
        ("", None),
    ],
)
def test_the_memory_limit_setting_takes_sizes(
    monkeypatch: pytest.MonkeyPatch, text: str, size: int | None
) -> None:
    monkeypatch.setenv("MLAPI_MEMORY_LIMIT", text)
    assert load_settings(env_file=None).memory_limit == size


@pytest.mark.parametrize("text", ["lots", "-1g", "2 gigabytes", "0"])
def test_a_memory_limit_that_is_not_a_size_is_one_line(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("MLAPI_MEMORY_LIMIT", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    assert "MLAPI_MEMORY_LIMIT" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "limit"),
    [("garbage", None), (str(1 << 60), None), (str((1 << 60) - 1), (1 << 60) - 1), ("max", None)],
)
def test_a_cgroup_limit_is_a_number_under_the_unlimited_mark(
    tmp_path: Path, text: str, limit: int | None
) -> None:
    assert memory.cgroup_limit(_files(tmp_path, {"memory.max": text + "\n"})) == limit


def test_cgroup_use_without_a_cache_figure_or_below_it(tmp_path: Path) -> None:
    root = _files(tmp_path / "a", {"memory.current": str(300 * MIB), "memory.stat": "anon 5\n"})
    assert memory.cgroup_used(root) == 300 * MIB
    root = _files(tmp_path / "b", {"memory.current": "10", "memory.stat": f"inactive_file {MIB}\n"})
    assert memory.cgroup_used(root) == 0
    assert memory.cgroup_used(tmp_path / "none") is None


def test_the_host_without_its_figures_is_zero(tmp_path: Path) -> None:
    meminfo = _files(tmp_path, {"meminfo": "MemFree: 1 kB\n"}) / "meminfo"
    assert memory.host_memory(meminfo) == (0, 0)
    meminfo.write_text("MemTotal: 2048 kB\n")
    assert memory.host_memory(meminfo) == (2 * MIB, 0)  # no MemAvailable: nothing counted used


def test_limit_and_use_come_from_the_setting_the_cgroup_or_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "resident_bytes", lambda: 10 * MIB)
    limited = _files(
        tmp_path / "cg",
        {"memory.max": str(512 * MIB), "memory.current": str(300 * MIB), "memory.stat": ""},
    )
    unread = _files(tmp_path / "cg-no-use", {"memory.max": str(512 * MIB)})
    host = _files(tmp_path, {"meminfo": "MemTotal: 4096 kB\nMemAvailable: 1024 kB\n"}) / "meminfo"
    none = tmp_path / "no-cgroup"
    assert MemoryBudget(64 * MIB, 3, None, limited, host).limit_and_used() == (64 * MIB, 30 * MIB)
    assert MemoryBudget(None, 3, None, limited, host).limit_and_used() == (512 * MIB, 300 * MIB)
    assert MemoryBudget(None, 3, None, unread, host).limit_and_used() == (512 * MIB, 30 * MIB)
    assert MemoryBudget(None, 3, None, none, host).limit_and_used() == (4 * MIB, 3 * MIB)


def test_a_refusal_from_one_worker_and_a_measurement_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "resident_bytes", lambda: 100 * MIB)
    folder = _version(tmp_path, 2 * MIB)  # an ONNX file: three times, 6 MiB
    cache = tmp_path / "cache"
    cache.mkdir()
    budget = MemoryBudget(4 << 30, workers=1, cache_dir=cache)
    budget.check(folder, ModelConfig(), "")  # 6 MiB fits in 4 GiB
    budget.remember("fp", 4000 * MIB)
    with pytest.raises(InsufficientMemory) as refused:
        budget.check(folder, ModelConfig(), "fp")
    # 4,096 less 100 in use less 4,096 / 20 kept free
    assert str(refused.value) == (
        "needs about 4,000 MiB, from measured at its last load; 3,791 MiB is left under the "
        "memory limit of 4,096 MiB (100 MiB in use, 205 MiB kept free). Raise the limit "
        "(MLAPI_MEMORY_LIMIT or the container's) or unload a model"
    )
    tight = MemoryBudget(100 * MIB, workers=1, cache_dir=None)
    with pytest.raises(InsufficientMemory, match=r"; 0 MiB is left under .* 64 MiB kept free"):
        tight.check(folder, ModelConfig(), "")


def test_a_measurement_is_kept_only_when_it_means_something_and_the_newest_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    MemoryBudget(None, 1, None).remember("fp", 5 * MIB)  # no cache folder: nothing, no error
    cache = tmp_path / "cache"
    cache.mkdir()
    budget = MemoryBudget(None, 1, cache)
    budget.remember("", 5 * MIB)
    budget.remember("zero", 0)
    assert not (cache / "memory.json").exists()
    budget.remember("one", 1)
    folder = _version(tmp_path, 0)
    assert budget.need(folder, ModelConfig(), "one") == (1, "measured at its last load")
    for index in range(501):
        budget.remember(f"fp{index}", MIB)
    kept = MemoryBudget(None, 1, cache)
    assert kept.need(folder, ModelConfig(), "fp0")[1] == "estimated from its files"  # gone
    assert kept.need(folder, ModelConfig(), "fp1")[1] == "measured at its last load"
    import shutil

    shutil.rmtree(cache)
    with caplog.at_level("DEBUG", logger="mlapi.registry"):
        budget.remember("late", MIB)
    assert [r.getMessage() for r in caplog.records] == [
        "memory measurements not kept: FileNotFoundError"
    ]


def test_an_unmeasured_version_is_estimated_by_what_its_files_hold(tmp_path: Path) -> None:
    """Tree ensembles grow sixteen times in onnxruntime; other graphs three times; other
    files twice; the op's name found across the 1 MiB reads too."""
    budget = MemoryBudget(None, workers=1, cache_dir=None)
    plain = _version(tmp_path / "plain", MIB)
    assert budget.need(plain, ModelConfig(), "plain") == (3 * MIB, "estimated from its files")
    trees = _version(tmp_path / "trees", 0)
    blob = bytearray(2 * MIB)
    blob[MIB - 5 : MIB + 7] = b"TreeEnsemble"  # split between two reads
    (trees / "model.onnx").write_bytes(bytes(blob))
    assert budget.need(trees, ModelConfig(), "trees")[0] == 32 * MIB
    other = _version(tmp_path / "other", 0)
    (other / "model.onnx").unlink()
    (other / "model.skops").write_bytes(b"\0" * MIB)
    assert budget.need(other, ModelConfig(), "other")[0] == 2 * MIB
    # an estimate is read once per fingerprint: the same files are not read again
    (trees / "model.onnx").write_bytes(bytes(2 * MIB))
    assert budget.need(trees, ModelConfig(), "trees")[0] == 32 * MIB


def test_an_on_demand_load_is_held_to_the_worker_share_and_what_the_container_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers under a 1 GiB cgroup limit beside a 60 MiB supervisor: each has
    (1,024 - 64 - 60) / 2 = 450 MiB, less its own resident memory; the container's
    page cache (files read a moment ago) does not count against it, what it holds
    (anon, tmpfs) does."""
    monkeypatch.setattr(memory, "resident_bytes", lambda: 170 * MIB)
    monkeypatch.setattr(memory, "parent_resident_bytes", lambda: 60 * MIB)
    root = _files(
        tmp_path / "cg",
        {
            "memory.max": str(1024 * MIB),
            "memory.current": str(1000 * MIB),
            "memory.stat": f"anon {500 * MIB}\nshmem {100 * MIB}\nactive_file {400 * MIB}\n",
        },
    )
    budget = MemoryBudget(None, workers=2, cache_dir=None, cgroup=root)
    assert budget.share() == (450 * MIB, 280 * MIB)
    assert MemoryBudget(None, workers=1, cache_dir=None, cgroup=root).share()[0] == 960 * MIB
    assert memory.cgroup_held(root) == 600 * MIB
    folder = _version(tmp_path / "v", 0)
    budget.check_share(folder, parse({"memory_mb": 280}), "")  # 280 of 280 left
    with pytest.raises(InsufficientMemory, match=r"10 MiB is left of this worker.s share.*450"):
        budget.check_share(folder, parse({"memory_mb": 280}), "", reserved=270 * MIB)
    # the container: 1,024 - 600 held - 64 kept free = 360 MiB, whatever the share says
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    with pytest.raises(InsufficientMemory, match="360 MiB is left under the memory limit"):
        budget.check_share(folder, parse({"memory_mb": 400}), "")
    assert memory.cgroup_held(tmp_path / "none") is None


def test_held_memory_on_cgroup_v1_and_a_share_on_the_bare_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cgroup v1 counts rss and shmem under total_*; a v2 stat without anon is not
    taken for v1's; with no cgroup limit the share is of the host's memory."""
    root = _files(
        tmp_path / "v1",
        {"memory/memory.stat": f"total_cache {MIB}\ntotal_rss {30 * MIB}\ntotal_shmem {MIB}\n"},
    )
    assert memory.cgroup_held(root) == 31 * MIB
    both = _files(
        tmp_path / "both",
        {"memory.stat": "file 5\n", "memory/memory.stat": f"total_rss {7 * MIB}\n"},
    )
    assert memory.cgroup_held(both) == 7 * MIB
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 2097152 kB\nMemAvailable: 1048576 kB\n")
    monkeypatch.setattr(memory, "resident_bytes", lambda: 100 * MIB)
    bare = MemoryBudget(None, workers=1, cache_dir=None, cgroup=tmp_path / "none", meminfo=meminfo)
    assert bare.limit() == 2048 * MIB
    whole = 2048 * MIB - 2048 * MIB // 20  # less 5% kept free: 1,945.6 MiB, whole bytes
    share, left = bare.share()
    assert (share, left) == (whole, whole - 100 * MIB)
    assert isinstance(share, int)
    # one worker: no supervisor in the words; two: said, and its memory taken off
    folder = _version(tmp_path / "v", 0)
    with pytest.raises(InsufficientMemory) as one:
        bare.check_share(folder, parse({"memory_mb": 4000}), "")
    assert "supervisor" not in str(one.value) and "over 1 worker(s)" in str(one.value)
    monkeypatch.setattr(memory, "parent_resident_bytes", lambda: 45 * MIB)
    two = MemoryBudget(None, workers=2, cache_dir=None, cgroup=tmp_path / "none", meminfo=meminfo)
    assert two.share()[0] == (whole - 45 * MIB) // 2
    with pytest.raises(InsufficientMemory, match="kept free and the supervisor's memory, over 2"):
        two.check_share(folder, parse({"memory_mb": 4000}), "")


def test_a_measurement_without_a_cache_folder_is_still_used_by_this_process(
    tmp_path: Path,
) -> None:
    budget = MemoryBudget(None, workers=1, cache_dir=None)
    folder = _version(tmp_path, MIB)
    assert budget.known("fp") == 0
    budget.remember("fp", 40 * MIB)
    assert budget.known("fp") == 40 * MIB
    assert budget.need(folder, ModelConfig(), "fp") == (40 * MIB, "measured at its last load")
    assert budget.need(folder, ModelConfig(), "other")[1] == "estimated from its files"
