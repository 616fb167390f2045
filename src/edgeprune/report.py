"""Reports for people: a profile (or several side by side) as a rich table, and a collection of runs as
CSV, Markdown, PNG plots and one self-contained HTML page.

Runs on different data sets are never compared: every table and plot holds one data set. Ratios
(compression, size, speed-up, accuracy Δ) are to the dense run of the same model and data set found in
the collection, and blank without one.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from . import runs
from .errors import ConfigError
from .measure import Profile

MAX_LAYER_FIGURES = 6
FIGSIZE, DPI = (7.0, 4.5), 120
LAYERS_FIGSIZE = (7.0, 8.0)  # two panels: per-layer density above, per-group width below
RUN_FOLDER = "a run folder contains config.json and, once the run has finished, report.json"
MAIN_LATENCY = ("onnxruntime", 1, 1)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def profile_table(profiles: dict[str, Profile], title: str = "profile") -> Table:
    """One column per profile; latency rows for every (runtime, batch, threads) measured."""
    table = Table(title=title)
    table.add_column("metric")
    for label in profiles:
        table.add_column(label, justify="right")
    ps = list(profiles.values())

    def row(name: str, fmt) -> None:
        table.add_row(name, *(fmt(p) for p in ps))

    row("top-1 accuracy", lambda p: "—" if p.accuracy is None else f"{100 * p.accuracy:.2f} %")
    row("parameters", lambda p: _si(p.params))
    row("non-zero parameters", lambda p: _si(p.nonzero_params))
    row("sparsity (conv/linear)", lambda p: f"{100 * p.sparsity:.1f} %")
    row("MACs (dense)", lambda p: _si(p.macs))
    row("MACs (effective)", lambda p: _si(p.effective_macs))
    row("size fp32", lambda p: f"{p.bytes_fp32 / 2**20:.2f} MiB")
    row("size gzip", lambda p: f"{p.bytes_gzip / 2**20:.2f} MiB")
    keys = sorted({(t.runtime, t.batch_size, t.threads) for p in ps for t in p.latency})
    for rt, b, th in keys:
        def fmt(p: Profile, rt=rt, b=b, th=th) -> str:
            t = p.latency_of(rt, b, th)
            return "—" if t is None else f"{t.p50_ms:.2f} ms (p90 {t.p90_ms:.2f})"

        row(f"{rt} p50, batch {b}, {th} thread{'s' * (th > 1)}", fmt)
    row("peak inference memory", lambda p: "—" if p.peak_memory_mb is None else f"{p.peak_memory_mb:.1f} MiB")
    if len(ps) > 1:
        _ratio_rows(table, ps, keys)
    return table


def _ratio_rows(table: Table, ps: list[Profile], keys: list[tuple]) -> None:
    """Ratios of every profile to the first (the baseline): how much smaller, cheaper, faster."""
    base = ps[0]
    table.add_section()

    def ratio(a: float | None, b: float | None) -> str:
        return "—" if not a or not b else f"{a / b:.2f}×"

    table.add_row(f"vs {base.model} (first column):", *[""] * len(ps))
    table.add_row("  compression (non-zero params)", *(ratio(base.nonzero_params, p.nonzero_params) for p in ps))
    table.add_row("  size ×smaller (fp32 / gzip)", *(
        f"{ratio(base.bytes_fp32, p.bytes_fp32)} / {ratio(base.bytes_gzip, p.bytes_gzip)}" for p in ps))
    table.add_row("  MACs ×fewer (dense / effective)", *(
        f"{ratio(base.macs, p.macs)} / {ratio(base.effective_macs, p.effective_macs)}" for p in ps))
    for rt, b, th in keys:
        def speed(p: Profile, rt=rt, b=b, th=th) -> str:
            t0, t1 = base.latency_of(rt, b, th), p.latency_of(rt, b, th)
            return ratio(t0 and t0.p50_ms, t1 and t1.p50_ms)

        table.add_row(f"  {rt} speed-up, batch {b}, {th} thr.", *(speed(p) for p in ps))
    table.add_row("  accuracy Δ (points)", *(
        "—" if p.accuracy is None or base.accuracy is None else f"{100 * (p.accuracy - base.accuracy):+.2f}"
        for p in ps))


# ---------------------------------------------------------------------------------------------------
# Collecting runs


@dataclass
class RunRow:
    """One finished run (or one IMP level) as a report shows it."""

    name: str  # the run folder's name; an IMP level is "<run>/level_NN"
    path: Path
    data: str
    synthetic: bool
    model: str
    method: str  # dense, a PaI criterion, reconvene-<conversion>-<criterion>, imp, dnnshifter
    variant: str  # the options that make a different curve of the same method (not sparsity, level, budget)
    options: str  # the method's options, compactly
    options_full: dict
    sparsity_requested: float | None
    profile: Profile
    prune_seconds: float | None
    train_seconds: float | None
    model_kwargs: dict = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)  # per-layer rows: layer, shape, weights, kept, density
    groups: list[dict] = field(default_factory=list)  # Reconvene: coupled channels, width_before/width_after
    dense_layers: dict[str, list[int]] = field(default_factory=dict)  # layer -> shape in the dense original
    source: str | None = None  # DNNShifter: the sparse run it shrank
    budget: str = ""  # what the run was trained under: data options, training config (with seed), model kwargs
    # ratios to the dense run of the same model and data set (None without one)
    dense_run: str | None = None
    compression: float | None = None  # dense prunable weights / remaining prunable weights
    size_x_fp32: float | None = None
    size_x_gzip: float | None = None
    speedup: float | None = None  # ONNX Runtime p50, batch 1, 1 thread
    accuracy_delta: float | None = None  # percentage points

    @property
    def accuracy(self) -> float | None:
        return self.profile.accuracy

    @property
    def sparsity_measured(self) -> float:
        return self.profile.sparsity

    def latency_ms(self, runtime: str = "onnxruntime", batch_size: int = 1, threads: int = 1) -> float | None:
        t = self.profile.latency_of(runtime, batch_size, threads)
        return None if t is None else t.p50_ms

    @property
    def plot_sparsity(self) -> float:
        """Sparsity for accuracy-vs-sparsity: as requested; else as measured against the dense original."""
        if self.sparsity_requested is not None:
            return self.sparsity_requested
        return 1 - 1 / self.compression if self.compression else self.sparsity_measured


def collect(paths: Sequence[str | Path]) -> list[RunRow]:
    """The finished runs under `paths`: run folders, sweep folders (any folder holding run folders, at any
    depth) and IMP runs (one row per level). Unfinished runs inside sweeps are skipped."""
    rows = _collect(paths)[0]
    _relate(rows)
    return rows


def _collect(paths: Sequence[str | Path]) -> tuple[list[RunRow], list[Path]]:
    if isinstance(paths, str | Path):
        paths = [paths]
    folders: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name in (runs.REPORT, runs.CONFIG):
            p = p.parent
        if not p.is_dir():
            raise ConfigError(f"{p} is not a run or sweep folder: {'it is a file' if p.exists() else 'no such folder'}"
                              f"; pass run folders or folders holding them ({RUN_FOLDER})")
        found = [p] if _is_run(p) else _runs_under(p)
        if not found:
            raise ConfigError(f"{p} is not a run or sweep folder: no run folder in it at any depth ({RUN_FOLDER})")
        folders += found
    rows: list[RunRow] = []
    unfinished: list[Path] = []
    seen: set[Path] = set()
    for d in folders:
        if d.resolve() in seen:
            continue
        seen.add(d.resolve())
        got = _read_run(d)
        rows += got
        if not got:
            unfinished.append(d)
    if not rows:
        shown = ", ".join(str(d) for d in unfinished[:5]) or ", ".join(map(str, paths))
        raise ConfigError(f"no finished runs in {shown}: {RUN_FOLDER} (or, for IMP, level_NN/report.json)")
    _unique_names(rows)
    return rows, unfinished


def _relate(rows: list[RunRow]) -> None:
    """Link DNNShifter runs to their sources and every run to its dense run (ratios)."""
    _link_sources(rows)
    _dense_ratios(rows)


def _is_run(d: Path) -> bool:
    return (d / runs.REPORT).is_file() or (d / runs.CONFIG).is_file()


def _runs_under(d: Path) -> list[Path]:
    out = []
    for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out += [sub] if _is_run(sub) else _runs_under(sub)
    return out


def _read_run(d: Path) -> list[RunRow]:
    """The rows of one run folder: one, one per finished IMP level, or none while unfinished."""
    config = runs.read_json(d / runs.CONFIG) if (d / runs.CONFIG).is_file() else (
        runs.read_json(d.parent / runs.CONFIG) if (d.parent / runs.CONFIG).is_file() else {})
    report = runs.read_json(d / runs.REPORT) if (d / runs.REPORT).is_file() else None
    level_dirs = sorted(p for p in d.glob("level_[0-9]*") if (p / runs.REPORT).is_file())
    if report is None and not level_dirs:
        return []
    if report is None or "levels" in report:  # IMP, finished or not: one row per finished level
        by_level = {lv["level"]: lv for lv in (report or {}).get("levels", [])}
        rows = []
        for p in level_dirs:
            level = runs.read_json(p / runs.REPORT)
            by_level.pop(level.get("level"), None)
            rows.append(_row(p, f"{d.name}/{p.name}", {**(report or {}), **level}, config))
        for lv in by_level.values():  # a level folder gone: its profile is still in the run's report
            rows.append(_row(d / f"level_{lv['level']:02d}", f"{d.name}/level_{lv['level']:02d}",
                             {**report, **lv, "method": "imp"}, config))
        return sorted(rows, key=lambda r: r.name)
    return [_row(d, d.name, report, config)]


def _row(d: Path, name: str, report: dict, config: dict) -> RunRow:
    profile = Profile.from_dict(report["profile"])
    method, variant, options, requested = _method_of(report)
    return RunRow(
        name=name, path=d, data=report.get("data") or profile.accuracy_data or "unknown",
        synthetic=bool(report.get("synthetic_data", False)), model=profile.model, method=method,
        variant=variant, options=options, options_full=report.get("options", {}), sparsity_requested=requested,
        profile=profile,
        prune_seconds=report.get("prune_seconds", report.get("shrink_seconds")),
        train_seconds=(report.get("train") or {}).get("seconds"), model_kwargs=config.get("model_kwargs", {}),
        layers=report.get("layers", []), groups=report.get("groups", []),
        dense_layers={r["layer"]: r["shape"] for r in (report.get("pai") or {}).get("layers", [])},
        source=report.get("source"),
        budget=json.dumps({k: config.get(k) for k in ("data", "train", "model_kwargs")}, sort_keys=True),
    )


def _method_of(report: dict) -> tuple[str, str, str, float | None]:
    """(method label, variant, options in a few words, requested sparsity) of a run's report. The variant
    holds the options that make a different curve (everything but sparsity, IMP level and budget)."""
    o = report.get("options", {})
    method = report.get("method")
    if method is None:
        return "dense", "", "", 0.0
    if method == "imp":
        variant = (f"magnitude, scope {o.get('scope', 'global')}, −{o.get('fraction', 0):.0%}/level, "
                   f"rewind {o.get('rewind_iter', 0)}")
        return "imp", variant, f"level {report.get('level', '?')}, {variant}", 1 - report["density"]
    if method == "dnnshifter":
        return "dnnshifter", "", f"from {Path(report.get('source', '?')).name}", None
    words = [str(o.get("criterion", "?"))]
    if method == "reconvene":
        conversion = o.get("conversion", "?")
        if conversion == "width" and o.get("width_rule", "channels") != "channels":
            conversion = f"width-{o['width_rule']}"
        words = [f"{o.get('criterion')}→{conversion}"]
        if o.get("reference", "global") != "global":
            words.append(f"reference {o['reference']}")
        if o.get("round_to"):
            words.append(f"round to {o['round_to']}")
        method = f"reconvene-{conversion}-{o.get('criterion')}"
    else:  # prune at initialisation: the criterion names the method
        method = o.get("criterion", method)
    words.append(f"scope {o.get('scope', 'global')}")
    if o.get("rounds"):
        words.append(f"{o['rounds']} rounds")
    variant = ", ".join(words)
    if report.get("budget"):
        t = report["budget"]["target"]
        words.append(f"budget {t['metric']} {t['value']:g}")
    return method, variant, ", ".join(words), o.get("sparsity")


def _unique_names(rows: list[RunRow]) -> None:
    """Runs of different sweeps may share a folder name: name those by their parent folder too."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in rows:
        if counts[r.name] > 1:
            run_dir = r.path.parent if "/" in r.name else r.path  # an IMP level's run is its parent
            r.name = f"{run_dir.parent.name}/{r.name}"


def _same_run(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or a.parts[-2:] == b.parts[-2:]


def _link_sources(rows: list[RunRow]) -> None:
    """A DNNShifter run takes its requested sparsity and dense shapes from its source, if collected."""
    for r in rows:
        src = next((s for s in rows if r.source and _same_run(s.path, Path(r.source))), None)
        if src is not None:
            r.sparsity_requested = src.sparsity_requested
            r.dense_layers = r.dense_layers or _masked_shapes(src)


def _masked_shapes(r: RunRow) -> dict[str, list[int]]:
    return {} if r.method.startswith(("reconvene", "dnnshifter")) else {x["layer"]: x["shape"] for x in r.layers}


def _key(r: RunRow) -> tuple:
    return r.data, r.synthetic, r.model, json.dumps(r.model_kwargs, sort_keys=True)


def _dense_ratios(rows: list[RunRow]) -> None:
    dense: dict[tuple, RunRow] = {}
    shapes: dict[tuple, dict[str, list[int]]] = {}
    for r in rows:
        if r.method == "dense":
            dense.setdefault(_key(r), r)
        shapes.setdefault(_key(r), {}).update({**_masked_shapes(r), **r.dense_layers})
    for r in rows:
        r.dense_layers = {**shapes.get(_key(r), {}), **r.dense_layers}
        d = dense.get(_key(r))
        if d is None:
            continue
        p, q = d.profile, r.profile
        r.dense_run = d.name
        r.compression = p.prunable_params / q.prunable_nonzero if q.prunable_nonzero else None
        r.size_x_fp32 = p.bytes_fp32 / q.bytes_fp32
        r.size_x_gzip = p.bytes_gzip / q.bytes_gzip
        t0, t1 = d.latency_ms(*MAIN_LATENCY), r.latency_ms(*MAIN_LATENCY)
        r.speedup = t0 / t1 if t0 and t1 else None
        if p.accuracy is not None and q.accuracy is not None:
            r.accuracy_delta = 100 * (q.accuracy - p.accuracy)


# ---------------------------------------------------------------------------------------------------
# Re-timing: every run's latency measured again in one interleaved pass


@dataclass
class Retime:
    """Re-measure the ONNX Runtime latency of every collected run round-robin in one pass (see
    measure.latency_onnx_interleaved), so that ratios between runs are taken under the same conditions
    instead of at the different times (and loads) at which each run finished. The runs are not modified."""

    rounds: int = 6
    runs: int = 10  # timed calls per model and round
    warmup: int = 3
    settings: tuple[tuple[int, int], ...] | None = None  # (batch, threads); None: every ORT setting measured

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"re-timing needs rounds >= 1, runs >= 1 and warmup >= 0; got rounds={self.rounds}, "
                              f"runs={self.runs}, warmup={self.warmup}")


def retime(rows: list[RunRow], opts: Retime | None = None, progress: bool = False) -> dict:
    """Replace the ONNX Runtime latencies of `rows` with one interleaved re-measurement of their model.onnx
    files at `opts.settings` (default: every setting they measured); ONNX Runtime figures at other settings
    are dropped, so that stale and fresh timings never meet in a ratio. A run without a model.onnx keeps no
    ONNX Runtime latency. Returns what was done (settings, rounds, seconds, runs without a model.onnx)."""
    import time

    from rich.progress import Progress

    from .measure import latency_onnx_interleaved

    opts = opts or Retime()
    settings = sorted(opts.settings or {(t.batch_size, t.threads) for r in rows for t in r.profile.latency
                                        if t.runtime == "onnxruntime"} or {(1, 1)})
    for r in rows:  # timings of other settings, taken when each run finished, are never set beside fresh ones
        kept = [t for t in r.profile.latency if t.runtime != "onnxruntime"]
        r.profile = dataclasses.replace(r.profile, latency=kept)
    found = {r.name: r.path / runs.ONNX for r in rows}
    missing = sorted(n for n, f in found.items() if not f.is_file())
    todo = {r.name: (found[r.name], r.profile.input_shape) for r in rows if r.name not in missing}
    t0 = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        for batch, threads in settings:
            task = bar.add_task(f"re-timing {len(todo)} models, batch {batch}, {threads} thread(s)", total=opts.rounds)
            fresh = latency_onnx_interleaved(todo, batch, threads, opts.rounds, opts.runs, opts.warmup,
                                             progress=lambda done, _, task=task: bar.update(task, completed=done))
            for r in rows:
                if r.name in fresh:
                    r.profile = dataclasses.replace(r.profile, latency=[*r.profile.latency, fresh[r.name]])
    return {"settings": [list(s) for s in settings], "rounds": opts.rounds, "runs": opts.runs, "warmup": opts.warmup,
            "models": len(todo), "seconds": time.perf_counter() - t0, "without_onnx": missing}


# ---------------------------------------------------------------------------------------------------
# Pairs: a structured model against the unstructured model it stands in for


@dataclass
class Pair:
    """A structured run (Reconvene, DNNShifter) and its counterpart: the unstructured run of the same
    criterion, sparsity, model, data and training budget (Reconvene), or the sparse run it shrank."""

    run: RunRow
    counterpart: RunRow

    def _ratio(self, a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    @property
    def size_x(self) -> float:
        return self.counterpart.profile.bytes_fp32 / self.run.profile.bytes_fp32

    @property
    def params_x(self) -> float:
        return self.counterpart.profile.params / self.run.profile.params

    @property
    def macs_x(self) -> float:  # the unstructured model executes every dense MAC
        return self.counterpart.profile.macs / self.run.profile.macs

    def latency_x(self, batch: int = 1, threads: int = 1) -> float | None:
        return self._ratio(self.counterpart.latency_ms("onnxruntime", batch, threads),
                           self.run.latency_ms("onnxruntime", batch, threads))

    @property
    def efficiency(self) -> float | None:
        """How much of the MACs saving reaches ONNX Runtime: latency ratio (batch 1) / dense-MACs ratio."""
        lat = self.latency_x()
        return lat / self.macs_x if lat else None

    @property
    def accuracy_delta(self) -> float | None:  # percentage points
        a, b = self.run.accuracy, self.counterpart.accuracy
        return None if a is None or b is None else 100 * (a - b)


def pairs(rows: list[RunRow]) -> list[Pair]:
    """Every structured run in `rows` with its counterpart in `rows` (runs without one are left out)."""
    from .methods.pai import PaIOptions

    pai_keys = set(PaIOptions.__dataclass_fields__)
    out = []
    for r in rows:
        if r.method.startswith("reconvene"):
            want = {k: v for k, v in r.options_full.items() if k in pai_keys}
            match = [c for c in rows if c.method == want.get("criterion") and _key(c) == _key(r)
                     and c.budget == r.budget and c.options_full == want]
        elif r.method == "dnnshifter" and r.source:
            match = [c for c in rows if c is not r and _same_run(c.path, Path(r.source))]
        else:
            continue
        if match:
            out.append(Pair(r, match[0]))
    return out


def headline(ps: list[Pair], tolerance: float = 0.5) -> list[str]:
    """Per model: the largest size and batch-1 latency gains over the counterpart among the pairs that
    keep its accuracy within `tolerance` points."""
    out = []
    for model in dict.fromkeys(p.run.model for p in ps):
        mine = [p for p in ps if p.run.model == model]
        fair = [p for p in mine if p.accuracy_delta is not None and p.accuracy_delta >= -tolerance]
        if not fair:
            out.append(f"{model}: no structured run is within {tolerance:g} points of its counterpart's accuracy "
                       f"({len(mine)} pairs).")
            continue
        big = max(fair, key=lambda p: p.size_x)
        fast = max(fair, key=lambda p: p.latency_x() or 0)
        text = f"{model}: up to {big.size_x:.2f}× smaller ({big.run.name}, {big.accuracy_delta:+.2f} points)"
        if fast.latency_x():
            text += (f" and up to {fast.latency_x():.2f}× faster at batch 1 ({fast.run.name}, "
                     f"{fast.accuracy_delta:+.2f} points)")
        out.append(f"{text} than its counterpart, within {tolerance:g} points of its accuracy; {len(fair)} of "
                   f"{len(mine)} structured runs qualify.")
    return out


# ---------------------------------------------------------------------------------------------------
# Tables


@dataclass
class _Column:
    key: str  # CSV header (raw values, unit in the name)
    header: str  # Markdown/HTML header (formatted values, unit in brackets)
    value: Callable[[Any], object]  # of a RunRow, or of a Pair
    fmt: Callable[[object], str] = str


def _f(spec: str, scale: float = 1.0) -> Callable[[object], str]:
    return lambda v: format(v * scale, spec)


def _latency_keys(rows: list[RunRow]) -> list[tuple[str, int, int]]:
    keys = {(t.runtime, t.batch_size, t.threads) for r in rows for t in r.profile.latency}
    return [MAIN_LATENCY] + sorted(keys - {MAIN_LATENCY})


def _columns(rows: list[RunRow], data_column: bool) -> list[_Column]:
    def latency(rt: str, b: int, th: int) -> _Column:
        short = "ORT" if rt == "onnxruntime" else rt
        return _Column(f"latency_ms_{short.lower()}_b{b}_t{th}", f"{short} p50 b{b} t{th} (ms)",
                       lambda r: r.latency_ms(rt, b, th), _f(".3f"))

    cols = [_Column("run", "run", lambda r: r.name)]
    if data_column:
        cols += [_Column("data", "data set", lambda r: r.data),
                 _Column("synthetic_data", "synthetic", lambda r: r.synthetic)]
    cols += [
        _Column("model", "model", lambda r: r.model),
        _Column("method", "method", lambda r: r.method),
        _Column("options", "options", lambda r: r.options),
        _Column("sparsity_requested", "sparsity req. (%)", lambda r: r.sparsity_requested, _f(".1f", 100)),
        _Column("sparsity_measured", "sparsity meas. (%)", lambda r: r.sparsity_measured, _f(".1f", 100)),
        _Column("params", "params (M)", lambda r: r.profile.params, _f(".3f", 1e-6)),
        _Column("nonzero_params", "non-zero (M)", lambda r: r.profile.nonzero_params, _f(".3f", 1e-6)),
        _Column("macs_dense", "MACs dense (M)", lambda r: r.profile.macs, _f(".2f", 1e-6)),
        _Column("macs_effective", "MACs eff. (M)", lambda r: r.profile.effective_macs, _f(".2f", 1e-6)),
        _Column("bytes_fp32", "fp32 (MiB)", lambda r: r.profile.bytes_fp32, _f(".3f", 2**-20)),
        _Column("bytes_gzip", "gzip (MiB)", lambda r: r.profile.bytes_gzip, _f(".3f", 2**-20)),
        *(latency(*k) for k in _latency_keys(rows)),
        _Column("accuracy", "accuracy (%)", lambda r: r.accuracy, _f(".2f", 100)),
        _Column("prune_s", "prune (s)", lambda r: r.prune_seconds, _f(".3g")),
        _Column("train_s", "train (s)", lambda r: r.train_seconds, _f(".1f")),
        _Column("dense_run", "vs dense run", lambda r: r.dense_run),
        _Column("compression_x", "compression (×)", lambda r: r.compression, _f(".2f")),
        _Column("size_x_fp32", "size fp32 (×)", lambda r: r.size_x_fp32, _f(".2f")),
        _Column("size_x_gzip", "size gzip (×)", lambda r: r.size_x_gzip, _f(".2f")),
        _Column("speedup_x", "ORT b1 t1 speed-up (×)", lambda r: r.speedup, _f(".2f")),
        _Column("accuracy_delta_pts", "accuracy Δ (pts)", lambda r: r.accuracy_delta, _f("+.2f")),
    ]
    return cols


def _cell(col: _Column, r) -> str:
    v = col.value(r)
    return "—" if v is None or v == "" else col.fmt(v)


def _pair_columns(ps: list[Pair], data_column: bool) -> list[_Column]:
    settings = sorted({(t.batch_size, t.threads) for p in ps for r in (p.run, p.counterpart)
                       for t in r.profile.latency if t.runtime == "onnxruntime"})
    cols = [_Column("run", "run", lambda p: p.run.name),
            _Column("counterpart", "counterpart", lambda p: p.counterpart.name)]
    if data_column:
        cols.append(_Column("data", "data set", lambda p: p.run.data))
    cols += [
        _Column("model", "model", lambda p: p.run.model),
        _Column("method", "method", lambda p: p.run.method),
        _Column("sparsity_requested", "sparsity req. (%)", lambda p: p.run.sparsity_requested, _f(".1f", 100)),
        _Column("accuracy", "accuracy (%)", lambda p: p.run.accuracy, _f(".2f", 100)),
        _Column("accuracy_delta_pts", "Δ accuracy (pts)", lambda p: p.accuracy_delta, _f("+.2f")),
        _Column("params_x", "params (×fewer)", lambda p: p.params_x, _f(".2f")),
        _Column("size_x_fp32", "size fp32 (×smaller)", lambda p: p.size_x, _f(".2f")),
        _Column("macs_x", "MACs (×fewer)", lambda p: p.macs_x, _f(".2f")),
        *(_Column(f"latency_x_b{b}_t{t}", f"ORT b{b} t{t} (×faster)", lambda p, b=b, t=t: p.latency_x(b, t), _f(".2f"))
          for b, t in settings),
        _Column("speedup_efficiency", "speed-up eff.", lambda p: p.efficiency, _f(".2f")),
    ]
    return cols


def _csv_text(rows: list[RunRow]) -> str:
    cols = _columns(rows, data_column=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c.key for c in cols] + ["options_json", "path"])
    for r in rows:
        values = ["" if (v := c.value(r)) is None else v for c in cols]
        w.writerow(values + [json.dumps(r.options_full, sort_keys=True), str(r.path)])
    return buf.getvalue()


def _pairs_csv_text(ps: list[Pair]) -> str:
    cols = _pair_columns(ps, data_column=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c.key for c in cols])
    for p in ps:
        w.writerow(["" if (v := c.value(p)) is None else v for c in cols])
    return buf.getvalue()


def _md_table(rows: list, cols: list[_Column] | None = None) -> str:
    cols = cols or _columns(rows, data_column=False)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"

    out = [line([c.header for c in cols]), line(["---"] * len(cols))]
    out += [line([_cell(c, r) for c in cols]) for r in rows]
    return "\n".join(out)


def _html_table(rows: list, cols: list[_Column] | None = None) -> str:
    cols = cols or _columns(rows, data_column=False)
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(c, r))}</td>" for c in cols) + "</tr>\n" for r in rows)
    return f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>'


# ---------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on the Agg canvas: no display, no global pyplot state)


@dataclass
class _Plot:
    file: str
    caption: str
    png: bytes


def _figure(figsize: tuple[float, float] = FIGSIZE):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", s).strip("-").lower() or "x"


class _Style:
    """One colour per curve (method and variant) and one marker per model, the same in every plot of a
    data set; a label names the model only where a data set has several, the variant only where a
    method has several."""

    MARKERS = "osD^vP*X"

    def __init__(self, rows: list[RunRow]):
        from matplotlib import colormaps

        curves = sorted({(r.method, r.variant) for r in rows if r.method != "dense"})
        cmap = colormaps["tab10" if len(curves) <= 10 else "tab20"]
        self.colors = {c: cmap(i % cmap.N) for i, c in enumerate(curves)}
        self.models = sorted({r.model for r in rows})
        self.variants = {m: sum(1 for c in curves if c[0] == m) for m, _ in curves}

    def label(self, r: RunRow) -> str:
        label = f"{r.method} ({r.variant})" if self.variants.get(r.method, 0) > 1 else r.method
        return f"{r.model} {label}" if len(self.models) > 1 else label

    def linestyle(self, r: RunRow) -> str:
        """Curves that coincide stay visible: each next curve is dashed differently."""
        return ("-", "--", "-.", ":")[list(self.colors).index((r.method, r.variant)) % 4]

    def kw(self, r: RunRow) -> dict:
        if r.method == "dense":
            return {"color": "black", "marker": "*"}
        return {"color": self.colors[r.method, r.variant],
                "marker": self.MARKERS[self.models.index(r.model) % len(self.MARKERS)]}


def _accuracy_vs_sparsity(rows: list[RunRow], data: str, style: _Style) -> _Plot:
    fig = _figure()
    ax = fig.add_subplot()
    curves: dict[str, list[RunRow]] = {}
    for r in rows:
        curves.setdefault(style.label(r), []).append(r)
    for label, rs in sorted(curves.items(), key=lambda kv: (kv[1][0].method != "dense", kv[0])):
        rs = sorted(rs, key=lambda r: r.plot_sparsity)
        xs, ys = [100 * r.plot_sparsity for r in rs], [100 * r.accuracy for r in rs]
        if rs[0].method == "dense":  # a level to compare with, not a point at sparsity 0 that squeezes the axis
            ax.axhline(ys[0], color="black", lw=1.2, ls=":", label=f"{label} ({ys[0]:.1f} %)", zorder=1)
        else:
            ax.plot(xs, ys, lw=1.6, ms=6, ls=style.linestyle(rs[0]), label=label, zorder=2, **style.kw(rs[0]))
    ax.set(xlabel="sparsity requested (% of prunable weights removed)", ylabel="top-1 accuracy (%)",
           title=f"Accuracy vs sparsity — {data}")
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    return _Plot(f"{_slug(data)}-accuracy-vs-sparsity.png",
                 "Accuracy against requested sparsity, one line per method (dotted: the dense run).", _png(fig))


def _legend(fig, ax, inside: int = 8) -> None:
    """Up to `inside` entries in the plot; more go beside it, on a wider figure, so they cover nothing."""
    if len(ax.get_legend_handles_labels()[1]) <= inside:
        ax.legend(fontsize=8, loc="best")
        return
    fig.set_figwidth(fig.get_figwidth() * 1.6)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="outside right upper")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats on both (lower cost, higher accuracy),
    cheapest first."""
    front, best = [], float("-inf")
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1])):
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _accuracy_vs_cost(rows: list[RunRow], data: str, style: _Style, cost: Callable[[RunRow], float | None],
                      what: str, xlabel: str, slug: str) -> _Plot | None:
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    rows = [r for r in rows if cost(r) is not None]
    if not rows:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    pts = [(cost(r), 100 * r.accuracy) for r in rows]
    done: set[str] = set()
    for r, (x, y) in zip(rows, pts, strict=True):
        label = style.label(r)
        ax.plot([x], [y], ls="none", ms=11 if r.method == "dense" else 7, alpha=0.9,
                label=None if label in done else label, zorder=3, **style.kw(r))
        done.add(label)
    front = pareto_front(pts)
    fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
    xs = [p[0] for p in pts]
    if max(xs) > 20 * min(xs) > 0:
        ax.set_xscale("log")
        # 0.2, 0.5, 1, 2, 5 … as plain numbers: the default minor labels (3×10⁻¹ …) run into each other
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.step(fx + [max(xs)], fy + [fy[-1]], where="post", color="0.25", lw=1.2, ls="--", zorder=2,
            label="Pareto front")
    ax.scatter(fx, fy, s=170, facecolors="none", edgecolors="0.1", linewidths=1.4, zorder=4)
    ax.set(xlabel=xlabel, ylabel="top-1 accuracy (%)", title=f"Accuracy vs {what} — {data}")
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    _name_points(fig, ax, pts, front, [r.name for r in rows])
    return _Plot(f"{_slug(data)}-accuracy-vs-{slug}.png",
                 f"Accuracy against {what}; circled points and the dashed step line are the Pareto front "
                 "(no other run is both cheaper and more accurate), cheapest first: "
                 + ", ".join(rows[i].name for i in front) + ".", _png(fig))


def _name_points(fig, ax, pts: list[tuple[float, float]], which: list[int], names: list[str]) -> None:
    """Name the points `which` where a name covers no other name, point or the legend; a point with no
    such place stays unnamed (the caption lists them all)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()  # final layout, axis limits and legend place
    legend = ax.get_legend()
    taken = []
    if legend is not None:  # inside the axes: pin it where "best" put it, and keep names off it
        legend.set_loc(tuple(legend.get_window_extent(renderer).transformed(ax.transAxes.inverted()).p0))
        taken.append(legend.get_window_extent(renderer))
    for i, (x, y) in enumerate(ax.transData.transform(pts)):
        r = 12 if i in which else 7  # pixels: ringed front points are larger
        taken.append(Bbox.from_bounds(x - r, y - r, 2 * r, 2 * r))
    inside = ax.get_window_extent(renderer)
    for i in which:
        for dx, dy in ((9, -9), (9, 9), (-9, -9), (-9, 9), (14, -22), (14, 22), (-14, -22), (-14, 22), (20, -34),
                       (-20, -34)):
            t = ax.annotate(names[i], pts[i], xytext=(dx, dy), textcoords="offset points", fontsize=7,
                            color="0.15", ha="left" if dx > 0 else "right", va="center",
                            arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.6, "shrinkA": 1, "shrinkB": 7})
            t.set_in_layout(False)
            t.update_positions(renderer)
            box = Text.get_window_extent(t, renderer)  # the name alone, not its leader line
            if (inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
                    and not any(box.overlaps(b) for b in taken)):
                taken.append(box)
                break
            t.remove()


def _group_label(g: dict) -> str:
    first, more = g["layers"][0], len(g["layers"]) - 1
    return f"{first} +{more}" if more else first


def _layers_figure(r: RunRow) -> _Plot:
    import numpy as np

    fig = _figure(LAYERS_FIGSIZE if r.groups else FIGSIZE)
    axes = fig.subplots(2, 1) if r.groups else [fig.add_subplot()]
    sp = "" if r.sparsity_requested is None else f", sparsity {100 * r.sparsity_requested:.0f} %"
    fig.suptitle(f"{r.name}\n{r.method}{sp}, {r.data}", fontsize=10)
    ax = axes[0]
    idx = np.arange(len(r.layers))
    dense_w = [int(np.prod(r.dense_layers.get(x["layer"], x["shape"]))) for x in r.layers]
    of_dense = np.array([100 * x["kept"] / w for x, w in zip(r.layers, dense_w, strict=True)])
    narrowed = np.array([w != x["weights"] for x, w in zip(r.layers, dense_w, strict=True)])
    ax.bar(idx, 100, 0.85, color="0.88", label="dense original (100 %)", zorder=1)
    # a narrowed layer shows its share of the dense layer beside its density inside the narrow layer
    shift = np.where(narrowed, -0.2, 0.0)
    bars = ax.bar(idx + shift, of_dense, np.where(narrowed, 0.4, 0.7), color="tab:blue",
                  label="weights kept, % of dense layer", zorder=2)
    ax.bar_label(bars, [f"{v:.2g}" if v < 10 else f"{v:.0f}" for v in of_dense], fontsize=6, padding=1)
    if narrowed.any():
        ax.bar(idx[narrowed] + 0.2, [100 * x["density"] for x, n in zip(r.layers, narrowed, strict=True) if n],
               0.4, color="tab:orange", alpha=0.6, label="density inside the narrowed layer", zorder=2)
    ax.set_xticks(idx, [x["layer"] for x in r.layers], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(idx) - 0.4)
    ax.set(ylabel="weights kept (%)", ylim=(0, 132), yticks=range(0, 101, 20))
    ax.set_title("Weights kept per layer", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncols=3, framealpha=0.95)
    ax.grid(axis="y", alpha=0.3)
    if r.groups:
        ax = axes[1]
        gi = np.arange(len(r.groups))
        ax.bar(gi - 0.2, [g["width_before"] for g in r.groups], 0.4, color="0.7", label="dense width")
        after = ax.bar(gi + 0.2, [g["width_after"] for g in r.groups], 0.4, color="tab:green", label="width after")
        ax.bar_label(after, fontsize=6, padding=1)
        ax.set_xticks(gi, [_group_label(g) for g in r.groups], rotation=90, fontsize=7)
        ax.set(ylabel="output channels")
        ax.set_title("Channel width per coupled group (+n: more layers sharing its channels)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    caption = "share of each dense layer's weights kept"
    if narrowed.any():
        caption += " (orange: density inside the narrowed layer)"
    if r.groups:
        caption += ", and channel width per coupled group before and after conversion"
    return _Plot(f"{_slug(r.data)}-layers-{_slug(r.name)}.png", f"{r.name}: {caption}.", _png(fig))


def _layer_runs(rows: list[RunRow], chosen: Sequence[str] | None) -> list[RunRow]:
    """The runs to draw per-layer figures of: those named, or the sparsest run of each method."""
    with_layers = [r for r in rows if r.layers and r.method != "dense"]
    if chosen is not None:
        by_name = {r.name: r for r in with_layers}
        missing = [n for n in chosen if n not in by_name]
        if missing:
            raise ConfigError(f"layer_runs {missing} are not pruned runs with per-layer rows in the collection; "
                              f"choose among {sorted(by_name)}")
        return [by_name[n] for n in chosen]
    sparsest: dict[tuple, RunRow] = {}
    for r in sorted(with_layers, key=lambda r: -r.plot_sparsity):
        sparsest.setdefault((r.data, r.model, r.method), r)
    return list(sparsest.values())[:MAX_LAYER_FIGURES]


# ---------------------------------------------------------------------------------------------------
# The report


@dataclass
class _Section:
    data: str
    rows: list[RunRow]
    plots: list[_Plot]
    notes: list[str]
    pairs: list[Pair] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)


def _sections(rows: list[RunRow], layer_runs: Sequence[str] | None, tolerance: float = 0.5) -> list[_Section]:
    for_layers = _layer_runs(rows, layer_runs)
    sections = []
    for data in sorted({r.data for r in rows}):
        rs = [r for r in rows if r.data == data]
        style = _Style(rs)
        acc = [r for r in rs if r.accuracy is not None]
        notes, plots = [], []
        no_acc = [r.name for r in rs if r.accuracy is None]
        if no_acc:
            why = "synthetic data" if all(r.synthetic for r in rs if r.accuracy is None) else "no accuracy measured"
            notes.append(f"Left out of the accuracy plots ({why}, accuracy is meaningless or absent): "
                         + ", ".join(no_acc) + ".")
        if acc:
            plots.append(_accuracy_vs_sparsity(acc, data, style))
            for plot in (
                _accuracy_vs_cost(acc, data, style, lambda r: r.latency_ms(*MAIN_LATENCY), "ONNX Runtime latency",
                                  "ONNX Runtime CPU latency, p50, batch 1, 1 thread (ms)", "latency"),
                _accuracy_vs_cost(acc, data, style, lambda r: r.profile.bytes_fp32 / 2**20, "size",
                                  "model size, fp32 state_dict (MiB)", "size"),
            ):
                if plot is not None:
                    plots.append(plot)
            no_lat = [r.name for r in acc if r.latency_ms(*MAIN_LATENCY) is None]
            if no_lat:
                notes.append("No ONNX Runtime latency at batch 1, 1 thread, so not in the latency plot: "
                             + ", ".join(no_lat) + ".")
        plots += [_layers_figure(r) for r in for_layers if r.data == data]
        if not any(r.method == "dense" for r in rs):
            notes.append("No dense run of this data set in the collection: ratios are blank.")
        ps = pairs(rs)
        sections.append(_Section(data, rs, plots, notes, ps, headline(ps, tolerance)))
    return sections


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem;
       margin-top: 2.5rem; }
.scroll { overflow-x: auto; margin: 1rem 0; }
table { border-collapse: collapse; font-size: .8rem; white-space: nowrap; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; }
th { background: #f3f3f3; position: sticky; top: 0; }
td:nth-child(-n+4), th:nth-child(-n+4) { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
.note { background: #fff8e1; border-left: 4px solid #f0c040; padding: .4rem .8rem; font-size: .9rem; }
"""


def _intro(rows: list[RunRow], unfinished: list[Path], timing: dict | None = None) -> list[str]:
    out = [f"{len(rows)} runs on {len({r.data for r in rows})} data set(s). Runs of different data sets are "
           "never mixed: each data set has its own section, table and plots.",
           "Ratios are to the dense run of the same model and data set: compression = dense prunable weights / "
           "remaining prunable weights; size and speed-up = dense / run (ONNX Runtime CPU p50, batch 1, 1 thread); "
           "accuracy Δ in percentage points. Latency in ms per batch (p50)."]
    out += _budgets(rows)
    if timing is not None:
        settings = ", ".join(f"batch {b} with {t} thread{'s' * (t > 1)}" for b, t in timing["settings"])
        out.append(f"Latencies were re-measured for all {timing['models']} models in one interleaved pass when this "
                   f"report was made ({timing['rounds']} rounds × {timing['runs']} timed calls per model, after "
                   f"{timing['warmup']} warm-up calls; {settings}; {timing['seconds']:.0f} s), so ratios between runs "
                   "are taken under the same conditions; absolute times depend on the machine and its load. ONNX "
                   "Runtime figures at other settings are left out.")
        if timing["without_onnx"]:
            out.append("Not re-measured (no model.onnx): " + ", ".join(timing["without_onnx"]) + ".")
    else:
        out.append("Latencies are those each run measured when it finished (pass --retime to re-measure all of "
                   "them in one pass).")
    if unfinished:
        out.append("Unfinished runs (no report.json yet), not shown: " + ", ".join(d.name for d in unfinished) + ".")
    return out


PAIRS_TITLE = "Structured runs against their counterparts"
PAIRS_TEXT = ("Each Reconvene run against the unstructured run of the same criterion, sparsity, model, data and "
              "training budget, and each DNNShifter run against the sparse run it shrank: ×-figures are counterpart "
              "/ run (higher is better), accuracy Δ is run − counterpart in points. Speed-up efficiency = ONNX "
              "Runtime batch-1 speed-up / dense-MACs ratio: how much of the MACs saving reaches the runtime.")


def _budgets(rows: list[RunRow]) -> list[str]:
    """One line per model and training budget (data options, optimiser, schedule; the seeds run with it),
    from the runs' configs: what the accuracies in the tables were trained with."""
    seen: dict[tuple, set] = {}
    for r in rows:
        b = json.loads(r.budget)
        train = dict(b.get("train") or {})
        seed = train.pop("seed", None)
        seen.setdefault((r.data, r.model, json.dumps(b.get("data"), sort_keys=True),
                         json.dumps(train, sort_keys=True)), set()).add(seed)
    lines = []
    for (data, model, d, t), seeds in sorted(seen.items()):
        d, t = json.loads(d) or {}, json.loads(t)
        if not t:
            continue
        data_text = ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("name", "root")) or "all of it"
        train_text = (f"{t.get('epochs')} epoch(s), SGD lr {t.get('lr')} (momentum {t.get('momentum')}, weight decay "
                      f"{t.get('weight_decay')}), {t.get('schedule')} schedule")
        if t.get("steps_per_epoch"):
            train_text += f", at most {t['steps_per_epoch']} batches per epoch"
        if t.get("label_smoothing"):
            train_text += f", label smoothing {t['label_smoothing']}"
        shown = ", ".join(str(x) for x in sorted(x for x in seeds if x is not None)) or "?"
        lines.append(f"{model} on {data} ({data_text}): {train_text}; seed(s) {shown}.")
    if not lines:
        return []
    return ["Training budgets, from the runs' configs (IMP trains this budget at every level): " + " ".join(lines)]


def _markdown(title: str, sections: list[_Section], intro: list[str]) -> str:
    out = [f"# {title}", "", *(f"{p}\n" for p in intro)]
    for s in sections:
        out += [f"## Data set: {s.data}", "", _md_table(s.rows), ""]
        if s.pairs:
            out += [f"### {PAIRS_TITLE}", "", PAIRS_TEXT, "", *(f"- {h}" for h in s.headline), "",
                    _md_table(s.pairs, _pair_columns(s.pairs, data_column=False)), ""]
        out += [f"> {n}\n" for n in s.notes]
        out += [f"![{p.caption}]({p.file})\n" for p in s.plots]
    return "\n".join(out)


def _html(title: str, sections: list[_Section], intro: list[str]) -> str:
    e = html.escape
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>',
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>", *(f"<p>{e(p)}</p>" for p in intro)]
    if len(sections) > 1:
        parts.append("<p>Data sets: " + ", ".join(f'<a href="#data-{_slug(s.data)}">{e(s.data)}</a>'
                                                  for s in sections) + "</p>")
    for s in sections:
        parts += [f'<section id="data-{_slug(s.data)}"><h2>Data set: {e(s.data)}</h2>',
                  f"<p>{len(s.rows)} runs, all on {e(s.data)}; no run of another data set is in this table or "
                  "its plots.</p>", _html_table(s.rows)]
        if s.pairs:
            parts += [f"<h3>{e(PAIRS_TITLE)}</h3>", f"<p>{e(PAIRS_TEXT)}</p>",
                      "<ul>" + "".join(f"<li>{e(h)}</li>" for h in s.headline) + "</ul>",
                      _html_table(s.pairs, _pair_columns(s.pairs, data_column=False))]
        parts += [f'<p class="note">{e(n)}</p>' for n in s.notes]
        for p in s.plots:
            data = base64.b64encode(p.png).decode("ascii")
            parts.append(f'<figure><img alt="{e(p.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(p.caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(paths: Sequence[str | Path], out: str | Path, title: str = "edgeprune report",
                 layer_runs: Sequence[str] | None = None, retime_opts: Retime | None = None,
                 tolerance: float = 0.5, progress: bool = False) -> dict[str, Path]:
    """Collect the runs under `paths` and write results.csv, results.md, report.html and the PNG plots
    into the folder `out`, and pairs.csv when structured runs have counterparts (see `pairs`).
    `layer_runs` names the runs to draw per-layer figures of (default: the sparsest run of each method, at
    most MAX_LAYER_FIGURES). `retime_opts` re-measures every run's latency in one pass first (see Retime);
    `tolerance` (points) is the accuracy loss the headline of the pairs allows. Returns {"csv", "md",
    "html", "pairs", <png stem>: path}."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report output {out} is a file; pass a folder")
    if _is_run(out):
        raise ConfigError(f"report output {out} is a run folder; write the report to a folder of its own")
    if tolerance < 0:
        raise ConfigError(f"tolerance is the accuracy loss allowed, in points, and must be >= 0; got {tolerance}")
    rows, unfinished = _collect(paths)
    timing = retime(rows, retime_opts, progress) if retime_opts is not None else None
    _relate(rows)
    sections = _sections(rows, layer_runs, tolerance)
    intro = _intro(rows, unfinished, timing)

    def text(name: str, s: str) -> Path:
        return runs.atomic_write(out / name, lambda f: f.write(s), binary=False)

    written = {"csv": text("results.csv", _csv_text(rows)), "md": text("results.md", _markdown(title, sections, intro))}
    all_pairs = [p for s in sections for p in s.pairs]
    if all_pairs:
        written["pairs"] = text("pairs.csv", _pairs_csv_text(all_pairs))
    for s in sections:
        for p in s.plots:
            written[Path(p.file).stem] = runs.atomic_write(out / p.file, lambda f, b=p.png: f.write(b))
    written["html"] = text("report.html", _html(title, sections, intro))
    return written
