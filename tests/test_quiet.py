"""benchmarks/quiet.sh: sweep cells paused while a timing command runs, and always let go after."""

import os
import subprocess
import time
from pathlib import Path

import pytest

QUIET = Path(__file__).parents[1] / "benchmarks" / "quiet.sh"


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def cell():
    """A stand-in for a Ray sweep cell: a process titled as Ray titles them."""
    proc = subprocess.Popen(["bash", "-c", "exec -a 'ray::_ray_cell' sleep 60"])
    try:
        for _ in range(100):  # until exec has retitled it
            if Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"ray::_ray_cell"):
                break
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
@pytest.mark.parametrize("status", [0, 3])
def test_cells_are_paused_during_the_command_and_resumed_after_it_even_when_it_fails(cell, status):
    done = subprocess.run(["bash", str(QUIET), "bash", "-c", f"cut -d' ' -f3 /proc/{cell}/stat; exit {status}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == status
    assert done.stdout.strip() == "T"  # stopped while the command ran
    assert str(cell) in done.stderr.split("paused sweep cells ")[1].split(";")[0].split()
    assert _state(cell) in "SR"  # running (sleeping) again


def test_without_a_command_it_says_how_to_use_it_and_pauses_nothing(cell):
    done = subprocess.run(["bash", str(QUIET)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage: bash benchmarks/quiet.sh COMMAND" in done.stderr
    assert _state(cell) in "SR"


def test_a_long_command_gets_the_cells_back_after_quiet_max_s(cell):
    # Ray drops a worker paused for minutes: the pause is capped, and the command told so
    done = subprocess.run(["bash", str(QUIET), "bash", "-c", f"sleep 4; cut -d' ' -f3 /proc/{cell}/stat"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "QUIET_MAX_S": "1"})
    assert done.returncode == 0 and done.stdout.strip() in ("S", "R")
    assert "ran past 1 s" in done.stderr
    bad = subprocess.run(["bash", str(QUIET), "true"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "QUIET_MAX_S": "soon"})
    assert bad.returncode == 2 and "QUIET_MAX_S must be a whole number of seconds, got 'soon'" in bad.stderr
    assert _state(cell) in "SR"
