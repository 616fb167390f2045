"""benchmarks/quiet.sh: sweep cells paused while a timing command runs, and always let go after."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

QUIET = Path(__file__).parents[1] / "benchmarks" / "quiet.sh"
# this test's stand-in cell only: never a real sweep's cells on the machine running the tests
TITLE = f"quiet-test-cell-{os.getpid()}"
ENV = {**os.environ, "QUIET_MATCH": TITLE}


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def cell():
    """A stand-in for a sweep cell, paused through QUIET_MATCH (the script's default matches Ray's own titles)."""
    proc = subprocess.Popen(["bash", "-c", f"exec -a '{TITLE}' sleep 60"])
    try:
        for _ in range(100):  # until exec has retitled it
            if Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(TITLE.encode()):
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
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == status
    assert done.stdout.strip() == "T"  # stopped while the command ran
    assert str(cell) in done.stderr.split("paused sweep cells ")[1].split(";")[0].split()
    assert _state(cell) in "SR"  # running (sleeping) again


def test_without_a_command_it_says_how_to_use_it_and_pauses_nothing(cell):
    done = subprocess.run(["bash", str(QUIET)], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 2 and "usage: bash benchmarks/quiet.sh COMMAND" in done.stderr
    assert _state(cell) in "SR"


def test_a_long_command_gets_the_cells_back_after_quiet_max_s(cell):
    # Ray drops a worker paused for minutes: the pause is capped, and the command told so
    done = subprocess.run(["bash", str(QUIET), "bash", "-c", f"sleep 4; cut -d' ' -f3 /proc/{cell}/stat"],
                          capture_output=True, text=True, timeout=60, env={**ENV, "QUIET_MAX_S": "1"})
    assert done.returncode == 0 and done.stdout.strip() in ("S", "R")
    assert "ran past 1 s" in done.stderr
    for value in ("soon", "0"):
        bad = subprocess.run(["bash", str(QUIET), "true"], capture_output=True, text=True, timeout=60,
                             env={**ENV, "QUIET_MAX_S": value})
        assert bad.returncode == 2 and f"at least 1, got '{value}'" in bad.stderr
    assert _state(cell) in "SR"


@pytest.mark.skipif(shutil.which("setsid") is None, reason="the watchdog needs setsid (util-linux)")
def test_the_cells_go_on_even_when_the_script_is_killed_outright(cell):
    # SIGKILL runs no trap: the detached watchdog lets them go after QUIET_MAX_S + 5 s
    proc = subprocess.Popen(["bash", str(QUIET), "sleep", "30"], env={**ENV, "QUIET_MAX_S": "1"},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while _state(cell) != "T" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _state(cell) == "T"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while _state(cell) == "T" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _state(cell) in "SR"


def test_stdin_reaches_the_command_and_no_cells_is_said(tmp_path):
    done = subprocess.run(["bash", str(QUIET), "cat"], input="hello\n", capture_output=True, text=True, timeout=60,
                          env={**os.environ, "QUIET_MATCH": f"no-such-process-{os.getpid()}"})
    assert done.returncode == 0 and done.stdout == "hello\n"
    assert "no sweep cells running here" in done.stderr
