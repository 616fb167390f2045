"""Carry the CIFAR-10 sweeps' small cells between machines whose disks do not outlive the checkout.

`benchmarks/runs/` is git-ignored: a sweep cut off on a machine that is then wiped starts again from epoch 1. This
copies every run folder of the sweeps under `benchmarks/runs/` whose files total at most `--max-mib` (ResNet-20's
cells, 2-5 MiB each; a VGG-16 cell's checkpoint is about 120 MiB and stays behind) into `benchmarks/carried/`,
which is committed (replacing a carried cell of another config), and copies them back where the run folder is
missing or has fewer finished epochs of the same config. A carried cell is the run folder itself (its
`checkpoint.pt` holds the optimiser and the epoch), so `edgeprune sweep` goes on from it as from any interrupted
run; a finished cell's `report.json` and model come with it. The JSON records name runs by this checkout's absolute
path (a Taylor or INT8 cell's source run, sweep.json's folders): carried, they say `benchmarks/runs/...`, and a
restore writes the new checkout's path back in (the sweep matches a source run by its folder's name either way).

    python benchmarks/carry.py save       # before the machine goes: runs/ -> carried/ (then git add and commit)
    python benchmarks/carry.py restore    # on a fresh checkout: carried/ -> runs/, then run the sweep again
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HERE = Path(__file__).parent
RUNS, CARRIED = HERE / "runs", HERE / "carried"
SWEEPS = ("cifar10_dense", "cifar10_taylor", "cifar10_pai", "cifar10_drive", "cifar10_target_rate",
          "cifar10_dnnshifter")


def epochs(folder: Path) -> int:
    """Epochs a run folder has finished (its log's lines), or a large number once it has a report."""
    if (folder / "report.json").exists():
        return 1 << 30
    log = folder / "log.jsonl"
    return sum(1 for line in log.read_text().splitlines() if line.strip()) if log.exists() else 0


def size_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def largest_mib(folder: Path) -> float:
    return max((f.stat().st_size for f in folder.rglob("*") if f.is_file()), default=0) / 2**20


def cells(root: Path) -> list[Path]:
    """Run folders (a config.json) of the CIFAR-10 sweeps under `root`; not a sweep's hidden staging copies (a cell
    started again beside its old folder), which the sweep never resumes from."""
    return sorted(c for s in SWEEPS for c in (root / s).glob("*/")
                  if not c.name.startswith(".") and (c / "config.json").exists())


LOCAL, PORTABLE = str(RUNS.resolve()), "benchmarks/runs"


def relocate(records: list[Path], to_portable: bool) -> None:
    """Rewrite the run paths in JSON `records`: this checkout's absolute runs folder to `benchmarks/runs`
    (to_portable), or back (a JSON string that starts with `benchmarks/runs/`)."""
    old, new = (LOCAL, PORTABLE) if to_portable else (f'"{PORTABLE}/', f'"{LOCAL}/')
    for record in records:
        text = record.read_text()
        if old in text:
            record.write_text(text.replace(old, new))


def copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def _config(cell: Path) -> str:
    """A cell's config.json with this checkout's runs folder written portably, to compare a run with its carried
    copy."""
    return (cell / "config.json").read_text().replace(LOCAL, PORTABLE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("direction", choices=["save", "restore"])
    ap.add_argument("--max-mib", type=float, default=16.0, help="carry only cells this small (default 16)")
    ap.add_argument("--max-file-mib", type=float, default=4.5, help="and whose every file is this small (default "
                    "4.5: the repository's checks flag tracked files over 5 MB)")
    args = ap.parse_args()
    src, dst = (RUNS, CARRIED) if args.direction == "save" else (CARRIED, RUNS)
    for cell in cells(src):
        target = dst / cell.relative_to(src)
        if args.direction == "save" and size_mib(cell) > args.max_mib:
            print(f"left behind (over {args.max_mib:g} MiB): {cell.relative_to(src)}")
            continue
        if args.direction == "save" and largest_mib(cell) > args.max_file_mib:
            print(f"left behind (a file over {args.max_file_mib:g} MiB): {cell.relative_to(src)}")
            if target.exists():  # carried earlier while it was smaller: not tracked any more
                shutil.rmtree(target)
            continue
        same_config = target.exists() and _config(target) == _config(cell)
        if target.exists() and not same_config and args.direction == "restore":
            print(f"kept {cell.relative_to(src)} in runs/: its config differs from the carried one's")
            continue
        if same_config and epochs(target) >= epochs(cell):
            continue  # carried/ is as far on; on save, a cell whose config changed (a new spec) replaces it
        target.parent.mkdir(parents=True, exist_ok=True)
        copy(cell, target)
        if args.direction == "restore":
            relocate(list(target.rglob("*.json")), to_portable=False)
        done = epochs(cell)
        print(f"{args.direction}d {cell.relative_to(src)}: "
              f"{'finished' if done >= 1 << 30 else f'{done} epoch(s)'}, {size_mib(cell):.1f} MiB")
    # each sweep's status file, which says which cells failed (a failed cell restarts from scratch): always the
    # source's, so a stale 'failed' never throws away a checkpoint carried later
    for sweep in {c.parent for c in cells(src)}:
        if (sweep / "sweep.json").exists() and (dst / sweep.name).is_dir():
            shutil.copyfile(sweep / "sweep.json", dst / sweep.name / "sweep.json")
            if args.direction == "restore":
                relocate([dst / sweep.name / "sweep.json"], to_portable=False)
    if args.direction == "save":  # every carried record, including cells carried before and kept as they were
        relocate(list(CARRIED.rglob("*.json")), to_portable=True)
        (CARRIED / "README.md").write_text(
            "# Carried sweep cells\n\nWritten by `python benchmarks/carry.py save`: the CIFAR-10 sweeps' small "
            "run folders, so that a sweep interrupted on a machine that is then wiped resumes on the next "
            "(`python benchmarks/carry.py restore`, then `edgeprune sweep` again). See benchmarks/README.md.\n\n"
            + "".join(f"- `{c.relative_to(CARRIED)}`: "
                      f"{'finished' if epochs(c) >= 1 << 30 else f'{epochs(c)} epoch(s) of training'}\n"
                      for c in cells(CARRIED)))


if __name__ == "__main__":
    main()
