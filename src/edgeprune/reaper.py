"""What the deployment commands start (tier and edge servers, device processes, Flower's processes, network
namespaces, cgroups) is recorded while it lives, so that nothing outlives the command that started it.

A command that ends normally, fails or is interrupted stops what it started in its own `finally` blocks. A command
killed by SIGKILL runs no code at all: its record stays behind in the state folder, and the next deployment command
(`reap()` at its start) stops and removes what the record names. A record names its owner by pid and start time, and
each process likewise, so a pid the kernel has since given to another process is never signalled.

`interrupt_promptly()` makes Ctrl-C of a command that runs Flower and Ray end it at once: Ray's and Flower's threads
answer a first Ctrl-C with tracebacks and keep the process alive; here a Ctrl-C stops what was recorded and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from . import signals

_lock = threading.RLock()  # re-entered by a signal handler that interrupts its holder


def state_dir() -> Path:
    """Where live records are kept: $EDGEPRUNE_STATE_DIR, else a folder of this user's in the temporary folder."""
    return Path(os.environ.get("EDGEPRUNE_STATE_DIR") or Path(tempfile.gettempdir()) / f"edgeprune-{os.getuid()}-live")


def _started(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), None if there is none."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _mine() -> Path:
    return state_dir() / f"{os.getpid()}.json"


def _read(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    return record if isinstance(record, dict) else {}


def _update(change) -> None:
    """Apply `change(record)` to this process's record (made if missing), written atomically."""
    with _lock:
        path = _mine()
        record = _read(path) or {"owner": os.getpid(), "owner_start": _started(os.getpid()), "processes": [],
                                 "namespaces": [], "cgroups": []}
        change(record)
        if not (record["processes"] or record["namespaces"] or record["cgroups"]):
            path.unlink(missing_ok=True)  # nothing of ours is left to clean up
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)


def track_process(pid: int) -> None:
    _update(lambda r: r["processes"].append([pid, _started(pid)]))


def descendants(pid: int | None = None) -> list[int]:
    """The processes below `pid` (this process by default), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


def track_descendants() -> None:
    """Record every process below this one (those a library started: Ray's), so a SIGKILL leaves none behind."""
    def add(record: dict) -> None:
        known = {p for p, _ in record["processes"]}
        record["processes"] += [[pid, _started(pid)] for pid in descendants() if pid not in known]

    _update(add)


def track_namespace(name: str) -> None:
    _update(lambda r: r["namespaces"].append(name))


def track_cgroup(path: str | Path) -> None:
    _update(lambda r: r["cgroups"].append(str(path)))


def forget_process(pid: int) -> None:
    _update(lambda r: r.update(processes=[p for p in r["processes"] if p[0] != pid]))


def forget_namespace(name: str) -> None:
    _update(lambda r: r.update(namespaces=[n for n in r["namespaces"] if n != name]))


def forget_cgroup(path: str | Path) -> None:
    _update(lambda r: r.update(cgroups=[c for c in r["cgroups"] if c != str(path)]))


def _clean(record: dict) -> list[str]:
    """Stop and remove what `record` names; returns what was found still there."""
    found = []
    for pid, start in record.get("processes", []):
        if start is not None and _started(pid) == start:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                found.append(f"process {pid}")
    for ns in record.get("namespaces", []):
        if shutil.which("ip") and Path(f"/run/netns/{ns}").exists():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            found.append(f"namespace {ns}")
    for cgroup in record.get("cgroups", []):
        if Path(cgroup).is_dir():
            with contextlib.suppress(OSError):
                Path(cgroup).rmdir()
                found.append(f"cgroup {cgroup}")
    return found


def reap_and_say(say) -> None:
    """`reap()`, telling `say` what was cleaned up, if anything."""
    found = reap()
    if found:
        say(f"cleaned up after an earlier run that was killed: {', '.join(found)}")


def reap() -> list[str]:
    """Clean up after deployment commands that were killed (their owner is gone): what was still there."""
    folder = state_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("*.json"):
        record = _read(path)
        owner = record.get("owner")
        if isinstance(owner, int) and owner != os.getpid() and _started(owner) == record.get("owner_start"):
            continue  # its owner is still running
        if owner == os.getpid():
            continue
        found += _clean(record)
        path.unlink(missing_ok=True)
    return found


def recorded() -> dict:
    """This process's record as it is now (for `reap_own(since=...)`)."""
    with _lock:
        return _read(_mine())


def reap_own(since: dict | None = None) -> None:
    """Stop and remove what this process recorded (after `since`, a `recorded()` taken earlier, if given)."""
    before = since or {}
    with _lock:
        record = _read(_mine())
        new = {key: [v for v in record.get(key, []) if v not in before.get(key, [])]
               for key in ("processes", "namespaces", "cgroups")}
        _clean(new)
        _update(lambda r: r.update({key: [v for v in r[key] if v not in new[key]] for key in new}))


@contextlib.contextmanager
def interrupt_promptly(say=lambda text: print(text, file=sys.stderr, flush=True)) -> Iterator[None]:
    """Within the block, SIGINT (Ctrl-C) or SIGTERM stops what this process recorded and exits at once (130, 143):
    no second Ctrl-C, no wall of tracebacks from threads that catch the first. Outside the main thread (where no
    handler can be set) the block runs as it is."""
    def handler(signum, frame) -> None:
        # Killing Ray's processes from here would make Ray's core worker end this process first (exit 1): record
        # them, exit, and let a cleaner started now remove everything recorded once this process is gone.
        try:
            track_descendants()
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                                               os.environ.get("PYTHONPATH", "")]))
            subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid())], env=env, start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            say("interrupted: the edge servers, devices and emulated links this run started are being stopped")
        finally:
            os._exit(130 if signum == signal.SIGINT else 143)

    with signals.handled_by(handler, signal.SIGINT, signal.SIGTERM):
        yield


def main(argv: list[str] | None = None) -> None:
    """`python -m edgeprune.reaper PID`: wait (up to a minute) until process PID is gone, then reap."""
    pid = int((argv or sys.argv[1:])[0])
    start = _started(pid)
    for _ in range(600):
        if start is None or _started(pid) != start:
            break
        time.sleep(0.1)
    reap()


if __name__ == "__main__":
    main()
