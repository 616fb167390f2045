"""benchmarks/gpu_cells.py: a GPU machine's finished sweep cells packed into the device tool's few files, and
unpacked on another machine where the sweep counts them as finished."""

import importlib.util
import json
from pathlib import Path

import onnx
import pytest
import yaml

from edgeprune import sweep

ROOT = Path(__file__).parents[1]
spec_ = importlib.util.spec_from_file_location("gpu_cells", ROOT / "benchmarks" / "gpu_cells.py")
gpu_cells = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(gpu_cells)

DATA = {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 3, "size": 32, "batch_size": 16}


def _spec(path: Path, out: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "s", "out": str(out), "data": DATA, "models": ["conftest:Tiny"], "train": {"epochs": 1, "lr": 0.05},
        "measure": {"runs": 2, "warmup": 0, "memory": False}, "quantize": {"calibration": 8},
        "methods": [{"name": "magnitude", "sparsities": [0.5]}, {"name": "random", "sparsities": [0.5]}]}))
    return path


def test_packed_cells_unpack_elsewhere_as_finished_cells(tmp_path, capsys):
    there, here = tmp_path / "gpu" / "runs", tmp_path / "here" / "runs"
    spec = _spec(tmp_path / "s.yaml", here / "s")
    sweep.run_sweep(spec, out=there / "s", only=["*magnitude*", "*-dense-seed0"], progress=False)
    out = tmp_path / "out"
    # the dense cell's INT8 copy was not asked for: not run, not packed; a budget too small for the last cell
    sizes = {c.name: len(gpu_cells.cell_archive(c, there)) for c in gpu_cells.finished_cells(there, [])}
    budget = sum(sizes.values()) - 1
    packed = gpu_cells.pack(there, out, ["*magnitude*", "*dense*"], max_file=budget // 3 + 1, max_files=8,
                            max_total=budget)
    assert packed == ["s/conftest_Tiny-magnitude-0.5-seed0", "s/conftest_Tiny-magnitude-0.5-seed0-int8"]
    assert "left behind" in capsys.readouterr().out and len(list(out.iterdir())) >= 2  # split into parts
    assert all(p.stat().st_size <= budget // 3 + 1 for p in out.iterdir())
    packed = gpu_cells.pack(there, out, ["*magnitude*", "*dense*"], max_file=1 << 20, max_files=8, max_total=8 << 20)
    assert len(packed) == 3

    only_copy = gpu_cells.pack(there, tmp_path / "copy", ["*-int8"], max_file=1 << 20, max_files=8,
                               max_total=8 << 20)
    assert only_copy == ["s/conftest_Tiny-magnitude-0.5-seed0", "s/conftest_Tiny-magnitude-0.5-seed0-int8"]  # its run

    from edgeprune import runs

    busy = here / "s" / "conftest_Tiny-dense-seed0"
    with runs.locked(busy):  # a sweep here is training that cell: unpack leaves it alone
        written = gpu_cells.unpack(out, here)
    assert "a process here is training it" in capsys.readouterr().out and not busy.exists()
    written += gpu_cells.unpack(out, here)
    assert sorted(p.name for p in written) == sorted(p.split("/")[1] for p in packed)
    int8 = here / "s" / "conftest_Tiny-magnitude-0.5-seed0-int8"
    assert not (int8 / "checkpoint.pt").exists() and onnx.load(int8 / "model.onnx").graph.node  # travelled
    assert onnx.load(here / "s" / "conftest_Tiny-magnitude-0.5-seed0" / "model.onnx").graph.node  # exported again
    assert not list((here / "s").glob(".*.unpack"))
    source = json.loads((int8 / "report.json").read_text())["source"]
    assert source == str((here / "s" / "conftest_Tiny-magnitude-0.5-seed0").resolve())  # this machine's path
    summary = sweep.run_sweep(spec, progress=False)  # the packed cells count as finished; the rest run here
    assert summary["counts"] == {"skipped": 3, "done": 3}


def test_unpack_refuses_parts_it_did_not_write(tmp_path):
    with pytest.raises(SystemExit, match="no cells.tgz.NNN parts"):
        gpu_cells.unpack(tmp_path, tmp_path / "runs")
