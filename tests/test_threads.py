import subprocess
import sys
import time

import pytest
import torch

from edgeprune import threads
from edgeprune.errors import ConfigError


@pytest.mark.parametrize(("spec", "n"), [(1, 1), (3, 3), ("2", 2), (" 4 ", 4)])
def test_a_fixed_count_is_taken_as_given(spec, n):
    assert threads.resolve(spec) == n


@pytest.mark.parametrize("spec", [0, -1, "0", "two", "2.5", 2.5, True, "", None])
def test_a_bad_count_names_the_value_and_the_fix(spec):
    with pytest.raises(ConfigError, match=rf"threads must be a positive integer or 'auto', got {spec!r}.*--threads"):
        threads.resolve(spec)


@pytest.mark.parametrize(("usable", "busy", "n"), [
    (2, 0.0, 2), (2, 0.2, 2),  # quiet: every core
    (2, 1.0, 1), (2, 0.8, 1), (2, 0.5, 1),  # one core (mostly) busy on two: one thread, never oversubscribe
    (2, 3.0, 1),  # overloaded: still one
    (4, 1.0, 3), (8, 2.1, 6), (8, 2.3, 5),
    (1.5, 0.0, 1), (2.5, 0.0, 2),  # a fractional quota: whole threads within it
])
def test_auto_takes_the_cores_others_leave_free(usable, busy, n):
    assert threads.auto(usable, busy) == n


def _cgroup_v2(tmp_path, path: str, limits: dict[str, str]):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cgroup").write_text(f"0::{path}\n")
    for folder, value in limits.items():
        (tmp_path / "cg" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / folder / "cpu.max").write_text(value + "\n")
    return tmp_path / "cg", tmp_path / "proc"


def test_cgroup_v2_quota_is_the_tightest_on_the_path(tmp_path):
    root, proc = _cgroup_v2(tmp_path, "/a/b", {"": "max 100000", "a": "150000 100000", "a/b": "300000 100000"})
    assert threads.cgroup_quota(root, proc) == 1.5


def test_cgroup_v2_without_a_limit_is_none(tmp_path):
    root, proc = _cgroup_v2(tmp_path, "/", {"": "max 100000"})
    assert threads.cgroup_quota(root, proc) is None


def test_cgroup_v1_cfs_quota(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cgroup").write_text("4:memory:/x\n3:cpu,cpuacct:/job\n")
    folder = tmp_path / "cg" / "cpu,cpuacct" / "job"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("50000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_quota(tmp_path / "cg", tmp_path / "proc") == 0.5


def test_usable_cpus_never_exceed_the_affinity_mask():
    assert 1 <= threads.usable_cpus() <= len(threads._affinity())


def test_busy_ticks_count_only_the_allowed_cpus_and_leave_out_idle(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 900 10 0 0 0 0 0\n"
                    "cpu0 10 1 5 400 5 1 1 0 0 0\n"
                    "cpu1 90 0 45 500 5 0 0 2 0 0\n"
                    "intr 12345\n")
    assert threads._busy_ticks(stat, {0}) == 10 + 1 + 5 + 1 + 1
    assert threads._busy_ticks(stat, {0, 1}) == 18 + 90 + 45 + 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_a_busy_process_beside_us_is_seen_and_our_own_work_is_not():
    spin = "import time\nt = time.time()\nwhile time.time() - t < 3: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        assert threads.busy_elsewhere(0.5) > 0.6  # the spinner's core (other load on this machine only adds)
    finally:
        proc.kill()
        proc.wait()


def test_step_sets_torch_threads_and_restores_them():
    before = torch.get_num_threads()
    with threads.step(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), threads.step(1):
        raise RuntimeError
    assert torch.get_num_threads() == before
