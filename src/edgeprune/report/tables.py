"""Tables: one or several profiles side by side for the terminal (rich), and the collected runs and pairs
as CSV (raw values, unit in the column name) and Markdown (formatted values, unit in the header)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from ..measure import Profile
from .collect import MAIN_LATENCY, RunRow
from .pairs import Pair
from .sections import PAIRS_TEXT, PAIRS_TITLE, Section


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

    row("precision (model.onnx)", lambda p: p.precision)
    row("top-1 accuracy", lambda p: "—" if p.accuracy is None else
        f"{100 * p.accuracy:.2f} %" + (f" ({p.accuracy_runtime})" if p.accuracy_runtime else ""))
    row("parameters", lambda p: _si(p.params))
    row("non-zero parameters", lambda p: _si(p.nonzero_params))
    row("sparsity (conv/linear)", lambda p: f"{100 * p.sparsity:.1f} %")
    row("MACs (dense)", lambda p: _si(p.macs))
    row("MACs (effective)", lambda p: _si(p.effective_macs))
    row("size fp32", lambda p: f"{p.bytes_fp32 / 2**20:.2f} MiB")
    row("size gzip", lambda p: f"{p.bytes_gzip / 2**20:.2f} MiB")
    row("model.onnx (raw / gzip)", lambda p: "—" if p.bytes_onnx is None else
        f"{p.bytes_onnx / 2**20:.2f} / {p.bytes_onnx_gzip / 2**20:.2f} MiB")
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
    table.add_row("  model.onnx ×smaller (raw / gzip)", *(
        f"{ratio(base.bytes_onnx, p.bytes_onnx)} / {ratio(base.bytes_onnx_gzip, p.bytes_onnx_gzip)}" for p in ps))
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


def verdicts(profiles: dict[str, Profile], timing: str) -> list[str]:
    """One sentence per run after the first, against the first: what the table shows, in words. `timing`
    says how the batch-1 latencies were taken (a speed-up is only fair between models timed side by side)."""
    (first, base), *rest = profiles.items()
    t0 = base.latency_of(*MAIN_LATENCY)
    lines = []
    for name, p in rest:
        t = p.latency_of(*MAIN_LATENCY)
        words = [f"{base.bytes_fp32 / p.bytes_fp32:.1f}× smaller ({base.params / p.params:.1f}× fewer parameters, "
                 f"{base.nonzero_params / max(p.nonzero_params, 1):.1f}× fewer non-zero)"]
        if base.bytes_onnx and p.bytes_onnx and (base.precision, p.precision) != ("fp32", "fp32"):
            words[0] = (f"model.onnx {base.bytes_onnx / p.bytes_onnx:.1f}× smaller ({base.precision} → {p.precision}; "
                        f"gzip {base.bytes_onnx_gzip / p.bytes_onnx_gzip:.1f}×; "
                        f"{base.params / p.params:.1f}× fewer parameters)")
        if t0 and t:
            x = t0.p50_ms / t.p50_ms
            words.append(f"{x:.2f}× {'faster' if x >= 1 else 'slower'} at batch 1 ({timing})")
        if p.accuracy is not None and base.accuracy is not None:
            how = {base.accuracy_runtime, p.accuracy_runtime} - {None}
            words.append(f"accuracy {100 * (p.accuracy - base.accuracy):+.1f} points"
                         + (f" ({' vs '.join(r or '?' for r in (p.accuracy_runtime, base.accuracy_runtime))})"
                            if len(how) > 1 else ""))
        lines.append(f"{name} vs {first}: " + ", ".join(words))
    return lines


@dataclass
class Column:
    key: str  # CSV header (raw values, unit in the name)
    header: str  # Markdown/HTML header (formatted values, unit in brackets)
    value: Callable[[Any], object]  # of a RunRow, or of a Pair
    fmt: Callable[[object], str] = str


def _f(spec: str, scale: float = 1.0) -> Callable[[object], str]:
    return lambda v: format(v * scale, spec)


def _latency_keys(rows: list[RunRow]) -> list[tuple[str, int, int]]:
    keys = {(t.runtime, t.batch_size, t.threads) for r in rows for t in r.profile.latency}
    return [MAIN_LATENCY] + sorted(keys - {MAIN_LATENCY})


def columns(rows: list[RunRow], data_column: bool) -> list[Column]:
    """The columns of the runs table; `data_column` adds the data set (the CSV holds every data set)."""
    def latency(rt: str, b: int, th: int) -> Column:
        short = "ORT" if rt == "onnxruntime" else rt
        return Column(f"latency_ms_{short.lower()}_b{b}_t{th}", f"{short} p50 b{b} t{th} (ms)",
                      lambda r: r.latency_ms(rt, b, th), _f(".3f"))

    cols = [Column("run", "run", lambda r: r.name)]
    if data_column:
        cols += [Column("data", "data set", lambda r: r.data),
                 Column("synthetic_data", "synthetic", lambda r: r.synthetic)]
    cols += [
        Column("model", "model", lambda r: r.model),
        Column("method", "method", lambda r: r.method),
        Column("options", "options", lambda r: r.options),
        Column("precision", "precision", lambda r: r.profile.precision),
        Column("sparsity_requested", "sparsity req. (%)", lambda r: r.sparsity_requested, _f(".1f", 100)),
        Column("sparsity_measured", "sparsity meas. (%)", lambda r: r.sparsity_measured, _f(".1f", 100)),
        Column("params", "params (M)", lambda r: r.profile.params, _f(".3f", 1e-6)),
        Column("nonzero_params", "non-zero (M)", lambda r: r.profile.nonzero_params, _f(".3f", 1e-6)),
        Column("macs_dense", "MACs dense (M)", lambda r: r.profile.macs, _f(".2f", 1e-6)),
        Column("macs_effective", "MACs eff. (M)", lambda r: r.profile.effective_macs, _f(".2f", 1e-6)),
        Column("bytes_fp32", "fp32 (MiB)", lambda r: r.profile.bytes_fp32, _f(".3f", 2**-20)),
        Column("bytes_gzip", "gzip (MiB)", lambda r: r.profile.bytes_gzip, _f(".3f", 2**-20)),
        Column("bytes_onnx", "model.onnx (MiB)", lambda r: r.profile.bytes_onnx, _f(".3f", 2**-20)),
        Column("bytes_onnx_gzip", "model.onnx gzip (MiB)", lambda r: r.profile.bytes_onnx_gzip, _f(".3f", 2**-20)),
        *(latency(*k) for k in _latency_keys(rows)),
        Column("accuracy", "accuracy (%)", lambda r: r.accuracy, _f(".2f", 100)),
        Column("accuracy_runtime", "accuracy by", lambda r: r.profile.accuracy_runtime),
        Column("prune_s", "prune (s)", lambda r: r.prune_seconds, _f(".3g")),
        Column("train_s", "train (s)", lambda r: r.train_seconds, _f(".1f")),
        Column("dense_run", "vs dense run", lambda r: r.dense_run),
        Column("compression_x", "compression (×)", lambda r: r.compression, _f(".2f")),
        Column("size_x_fp32", "size fp32 (×)", lambda r: r.size_x_fp32, _f(".2f")),
        Column("size_x_gzip", "size gzip (×)", lambda r: r.size_x_gzip, _f(".2f")),
        Column("size_x_onnx", "model.onnx (×)", lambda r: r.size_x_onnx, _f(".2f")),
        Column("speedup_x", "ORT b1 t1 speed-up (×)", lambda r: r.speedup, _f(".2f")),
        Column("accuracy_delta_pts", "accuracy Δ (pts)", lambda r: r.accuracy_delta, _f("+.2f")),
    ]
    return cols


def pair_columns(ps: list[Pair], data_column: bool) -> list[Column]:
    """The columns of the pairs table: the structured run, its counterpart and the ratios between them."""
    settings = sorted({(t.batch_size, t.threads) for p in ps for r in (p.run, p.counterpart)
                       for t in r.profile.latency if t.runtime == "onnxruntime"})
    cols = [Column("run", "run", lambda p: p.run.name),
            Column("counterpart", "counterpart", lambda p: p.counterpart.name)]
    if data_column:
        cols.append(Column("data", "data set", lambda p: p.run.data))
    cols += [
        Column("model", "model", lambda p: p.run.model),
        Column("method", "method", lambda p: p.run.method),
        Column("precision", "precision", lambda p: f"{p.run.profile.precision} vs {p.counterpart.profile.precision}"),
        Column("sparsity_requested", "sparsity req. (%)", lambda p: p.run.sparsity_requested, _f(".1f", 100)),
        Column("accuracy", "accuracy (%)", lambda p: p.run.accuracy, _f(".2f", 100)),
        Column("accuracy_delta_pts", "Δ accuracy (pts)", lambda p: p.accuracy_delta, _f("+.2f")),
        Column("params_x", "params (×fewer)", lambda p: p.params_x, _f(".2f")),
        Column("size_x_fp32", "size fp32 (×smaller)", lambda p: p.size_x, _f(".2f")),
        Column("onnx_x", "model.onnx (×smaller)", lambda p: p.onnx_x, _f(".2f")),
        Column("onnx_gzip_x", "model.onnx gzip (×smaller)", lambda p: p.onnx_gzip_x, _f(".2f")),
        Column("macs_x", "MACs (×fewer)", lambda p: p.macs_x, _f(".2f")),
        *(Column(f"latency_x_b{b}_t{t}", f"ORT b{b} t{t} (×faster)", lambda p, b=b, t=t: p.latency_x(b, t), _f(".2f"))
          for b, t in settings),
        Column("speedup_efficiency", "speed-up eff.", lambda p: p.efficiency, _f(".2f")),
    ]
    return cols


def cell(col: Column, item: Any) -> str:
    """A formatted table cell; "—" where there is no value."""
    v = col.value(item)
    return "—" if v is None or v == "" else col.fmt(v)


def results_csv(rows: list[RunRow]) -> str:
    """results.csv: every run of every data set, raw values, the method's options as JSON and the run's path."""
    return _csv(rows, [*columns(rows, data_column=True),
                       Column("options_json", "", lambda r: json.dumps(r.options_full, sort_keys=True)),
                       Column("path", "", lambda r: str(r.path))])


def pairs_csv(ps: list[Pair]) -> str:
    """pairs.csv: every structured run against its counterpart, raw values."""
    return _csv(ps, pair_columns(ps, data_column=True))


def _csv(items: Sequence, cols: list[Column]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([c.key for c in cols])
    for item in items:
        w.writerow(["" if (v := c.value(item)) is None else v for c in cols])
    return buf.getvalue()


def _md_table(items: Sequence, cols: list[Column]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"

    out = [line([c.header for c in cols]), line(["---"] * len(cols))]
    out += [line([cell(c, item) for c in cols]) for item in items]
    return "\n".join(out)


def markdown(title: str, sections: list[Section], intro: list[str]) -> str:
    """results.md: the intro, then per data set its runs table, its pairs, notes and plots."""
    out = [f"# {title}", "", *(f"{p}\n" for p in intro)]
    for s in sections:
        out += [f"## Data set: {s.data}", "", _md_table(s.rows, columns(s.rows, data_column=False)), ""]
        if s.pairs:
            out += [f"### {PAIRS_TITLE}", "", PAIRS_TEXT, "", *(f"- {h}" for h in s.headline), "",
                    _md_table(s.pairs, pair_columns(s.pairs, data_column=False)), ""]
        out += [f"> {n}\n" for n in s.notes]
        out += [f"![{p.caption}]({p.file})\n" for p in s.plots]
    return "\n".join(out)
