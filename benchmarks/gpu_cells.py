"""Bring a lent GPU machine's finished sweep cells back: `pack` there, `unpack` here.

The device tool returns at most 8 files of 16 MiB, 64 MiB in all, from `$OUT`. `pack` gzips the finished cells
(report.json present) of the sweep folders under a runs root, without what a finished cell can do without: its
`checkpoint.pt` and `pruned.pt` (for resuming: the optimiser's state, the pruned model before training) and its
`model.onnx` where its model.pt can make it again (an INT8 copy's ONNX file travels). It takes the cells in the
order the patterns name them, as many as fit, and splits the stream into `cells.tgz.NNN` parts; the cells that did
not fit are printed. JSON records name the runs root as `benchmarks/runs`, as `carry.py` does. `unpack` joins the
parts, extracts each cell into `benchmarks/runs/<sweep>/<cell>` (a cell already finished there is kept), exports its
model.onnx again and writes this checkout's path back into its records. The sweep then counts the cell as finished
(`edgeprune sweep` ignores the device of a finished cell), and its config.json says where it trained (`"device":
"cuda"`).

    # on the GPU machine (benchmarks/gpu_cells.sh runs the sweep, then this):
    python3 benchmarks/gpu_cells.py pack /tmp/runs 'vgg16-synflow-*' 'vgg16-snip-*' --to "$OUT"
    # here, on the files the device tool brought back:
    python benchmarks/gpu_cells.py unpack /work/.device/.../files
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).parent
RUNS = HERE / "runs"
PORTABLE = "benchmarks/runs"
LEFT_BEHIND = ("checkpoint.pt", "pruned.pt", "model.onnx")
PART = "cells.tgz"
MIB = 2**20


def finished_cells(root: Path, patterns: list[str]) -> list[Path]:
    """Finished run folders `root/<sweep>/<cell>`, in the order of the first pattern each matches (all, by name,
    without patterns)."""
    found = sorted(p.parent for p in root.glob("*/*/report.json")
                   if (p.parent / "config.json").exists() and not p.parent.name.startswith("."))
    if not patterns:
        return found
    return [c for pat in patterns for c in found if fnmatch.fnmatchcase(c.name, pat)
            and not any(fnmatch.fnmatchcase(c.name, p) for p in patterns[:patterns.index(pat)])]


def with_sources(cells: list[Path]) -> list[list[Path]]:
    """Each cell with the finished cells of its sweep it starts from (a Taylor run's dense run, an INT8 copy's
    run), sources first: a cell travels only with them, or the machine it lands on would train them again."""
    groups = []
    for cell in cells:
        chain, here = [cell], cell
        while True:
            source = (json.loads((here / "config.json").read_text()).get("method") or {}).get("source")
            here = cell.parent / Path(source).name if source else None
            if here is None or not (here / "report.json").exists():
                break
            chain.insert(0, here)
        groups.append(chain)
    return groups


def _needed(f: Path) -> bool:
    """Whether a file `pack` would leave behind must travel: a model.onnx with no model.pt to export it from
    again (an INT8 copy's model is its ONNX file)."""
    return f.name == "model.onnx" and not (f.parent / "model.pt").exists()


def cell_archive(cell: Path, root: Path) -> bytes:
    """One cell folder as a gzipped tar, `<sweep>/<cell>/...`, its records naming the runs root portably."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for f in sorted(cell.rglob("*")):  # an IMP cell's levels are folders of their own
            if not f.is_file() or f.name in LEFT_BEHIND and not _needed(f):
                continue
            data = f.read_bytes()
            if f.suffix in (".json", ".jsonl"):
                data = data.replace(str(root.resolve()).encode(), PORTABLE.encode())
            info = tarfile.TarInfo(f"{cell.parent.name}/{cell.name}/{f.relative_to(cell).as_posix()}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pack(root: Path, to: Path, patterns: list[str], max_file: int, max_files: int, max_total: int) -> list[str]:
    """Write the parts; return the names of the cells packed."""
    budget = min(max_total, max_file * max_files)
    chosen, left, stream = [], [], bytearray()
    for chain in with_sources(finished_cells(root, patterns)):
        names = [f"{c.parent.name}/{c.name}" for c in chain]
        new = [(n, c) for n, c in zip(names, chain, strict=True) if n not in chosen]
        if not new:
            continue
        data = [cell_archive(c, root) for _, c in new]
        if len(stream) + sum(map(len, data)) > budget:
            left.append(f"{names[-1]} ({sum(map(len, data)) / MIB:.1f} MiB with the cells it starts from)")
            continue
        for (name, _), d in zip(new, data, strict=True):
            stream += d
            chosen.append(name)
    to.mkdir(parents=True, exist_ok=True)
    for stale in to.glob(f"{PART}.[0-9][0-9][0-9]"):  # an earlier pack's parts would corrupt the joined stream
        stale.unlink()
    for i in range(0, len(stream), max_file):
        (to / f"{PART}.{i // max_file:03d}").write_bytes(stream[i:i + max_file])
    print(f"packed {len(chosen)} cell(s), {len(stream) / MIB:.1f} MiB in {-(-len(stream) // max_file)} part(s):")
    for name in chosen:
        print(f"  {name}")
    for name in left:
        print(f"left behind (over the {budget / MIB:g} MiB that come back): {name}")
    return chosen


def unpack(parts_dir: Path, runs: Path = RUNS) -> list[Path]:
    """Extract the parts' cells into `runs`; return the cells written."""
    parts = sorted(parts_dir.glob(f"{PART}.[0-9][0-9][0-9]"))
    if not parts:
        sys.exit(f"error: no {PART}.NNN parts in {parts_dir}; pass the folder the device tool put the files in")
    stream = b"".join(p.read_bytes() for p in parts)
    try:
        with tarfile.open(fileobj=io.BytesIO(stream), mode="r:gz", ignore_zeros=True) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, EOFError, OSError) as e:
        sys.exit(f"error: the parts in {parts_dir} do not join into a whole archive ({e}); is one of "
                 f"{PART}.000-{len(parts) - 1:03d} missing or cut short? Fetch them again")
    from edgeprune import runs as run_folders
    from edgeprune.errors import RunBusyError

    written, local = [], str(runs.resolve())
    for cell_name in dict.fromkeys(_cell_of(m.name) for m, _ in members):
        target = runs / cell_name
        try:
            with run_folders.locked(target):  # a sweep training this cell here holds it: leave that one be
                if (target / "report.json").exists():
                    print(f"kept {cell_name}: already finished here")
                    continue
                _write_cell(target, [(m, d) for m, d in members if _cell_of(m.name) == cell_name], local)
        except RunBusyError:
            print(f"kept {cell_name}: a process here is training it; unpack again once it has stopped")
            continue
        written.append(target)
        print(f"unpacked {cell_name} (trained on {json.loads((target / 'config.json').read_text())['device']})")
    return written


def _write_cell(target: Path, members: list[tuple[tarfile.TarInfo, bytes]], local: str) -> None:
    """The cell's files into a hidden folder beside `target` (which reports and sweeps skip), its model.onnx
    exported again, then swapped in for whatever `target` held (an interrupted attempt at the same cell)."""
    tmp = target.with_name(f".{target.name}.unpack")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for m, data in members:
            if m.name.endswith((".json", ".jsonl")):
                data = data.replace(f'"{PORTABLE}/'.encode(), f'"{local}/'.encode())
            dest = tmp / Path(m.name).relative_to(_cell_of(m.name))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        for model in tmp.rglob("model.pt"):
            _export_onnx(model.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def _cell_of(member: str) -> str:
    """`<sweep>/<cell>` of an archive member's path; refuses a path that would leave the runs folder."""
    parts = Path(member).parts
    if len(parts) < 3 or any(p in ("", ".", "..") for p in parts) or Path(member).is_absolute():
        sys.exit(f"error: {member!r} is not <sweep>/<cell>/<file>; these parts were not written by `pack`")
    return f"{parts[0]}/{parts[1]}"


def _export_onnx(cell: Path) -> None:
    """model.onnx again from model.pt (left behind by pack), as the run itself exported it."""
    from edgeprune import export

    model, extra = export.load(cell / "model.pt")
    export.to_onnx(model, cell / "model.onnx", tuple(extra["input_shape"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="on the GPU machine: finished cells under ROOT -> parts in --to")
    p.add_argument("root", type=Path, help="the runs root holding <sweep>/<cell> folders")
    p.add_argument("patterns", nargs="*", help="cell names to take, in this order (shell-style; default all)")
    p.add_argument("--to", type=Path, required=True, help="where the parts go ($OUT)")
    p.add_argument("--max-file-mib", type=float, default=15.5)
    p.add_argument("--max-files", type=int, default=8)
    p.add_argument("--max-total-mib", type=float, default=63)
    u = sub.add_parser("unpack", help="here: parts -> benchmarks/runs/<sweep>/<cell>")
    u.add_argument("parts", type=Path, help="the folder holding cells.tgz.NNN")
    args = ap.parse_args()
    if args.verb == "pack":
        pack(args.root, args.to, args.patterns, int(args.max_file_mib * MIB), args.max_files,
             int(args.max_total_mib * MIB))
    else:
        unpack(args.parts)


if __name__ == "__main__":
    main()
