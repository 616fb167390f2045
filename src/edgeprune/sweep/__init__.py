"""Sweeps: a grid of runs (models × methods with their options × sparsities × seeds) from one YAML spec.

Every cell is an ordinary run folder `<out>/<cell>/`, made by the same job as `edgeprune train`/`prune`.
`<out>/sweep.json` holds the parsed spec and every cell's status, rewritten atomically as each cell lands;
`<out>/spec.yaml` is a copy of the spec. Re-running a spec skips finished cells (report.json present),
resumes interrupted ones from their checkpoint and redoes failed ones (resumes those whose Ray worker died under
them), so a killed sweep loses at most the cells' epochs in flight.

Executors: `local` runs the cells one after another in this process; `ray` runs each cell as a Ray task,
on a local Ray instance or on a cluster (`address`) whose nodes all see `out` (shared storage).

    name: smoke                  # the folder: out, default runs/sweeps/<name>
    data: {name: fashion-mnist, subset: 1000, batch_size: 128}
    models: [resnet20, {name: vgg16, data: {subset: 500}}]   # an entry may override data, train and device
    train: {epochs: 1}
    measure: {runs: 10, memory: false}
    seeds: [0, 1]
    dense: true                  # a dense baseline per model and seed
    methods:
      - {name: magnitude, sparsities: [0.9, 0.95]}
      - {name: reconvene, criterion: [magnitude, synflow], conversion: [width, dead], sparsities: [0.9]}
      - {name: neuroflux, memory_budget: [64MiB, 96MiB]}   # training under a memory budget (no sparsity)
    resources: {cpus: 1, gpus: 0}   # what each cell asks Ray for
    quantize: {mode: static, calibration: 256, per_channel: true}   # or `quantize: int8` (static, defaults)

`device` (top level, or a model entry's) is where the cells train; `edgeprune sweep --device cuda --only 'vgg16-*'`
runs just some cells somewhere else, and a cell finished on one device counts as finished on any other (a GPU
machine's cells brought back to a CPU one).

A list given for a method option expands the grid; `sparsities` is the list form of `sparsity`. Cells are
named `<model>-<method>-<options>-<sparsity>-seed<seed>` (e.g. resnet20-reconvene-synflow-width-0.9-seed0).
With `quantize`, every cell but those of per-level methods (IMP: quantise a level with `edgeprune quantize`)
gets an INT8 copy `<cell>-int8`, made as `edgeprune quantize` makes it once its cell has finished.

The package: `spec` reads and checks a spec and names its cells; `run` decides what each cell needs (skip, resume,
redo), runs them in stages and records `sweep.json`; `executors` runs a batch of cells here or as Ray tasks.
"""

from .executors import EXECUTORS, NEEDS_RAY, run_cell
from .run import SPEC, SWEEP, run_sweep
from .spec import Cell, Resources, SweepSpec, cells, list_methods, load_spec

__all__ = ["EXECUTORS", "NEEDS_RAY", "SPEC", "SWEEP", "Cell", "Resources", "SweepSpec", "cells",
           "list_methods", "load_spec", "run_cell", "run_sweep"]
