"""What the report says, before it is written as Markdown or HTML: the intro, and per data set its runs,
pairs, headline, notes and plots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .collect import MAIN_LATENCY, RunRow
from .pairs import Pair, headline, pairs
from .plots import Plot, accuracy_plots, layer_runs, layers_figure, steps_figure

PAIRS_TITLE = "Structured runs against their counterparts"
PAIRS_TEXT = ("Each Reconvene run (fp32 or INT8) against the unstructured fp32 run of the same criterion, sparsity, "
              "model, data and training budget, each DNNShifter run against the sparse run it shrank, and each other "
              "INT8 run against the fp32 run it was quantised from: ×-figures are counterpart "
              "/ run (higher is better), accuracy Δ is run − counterpart in points. Speed-up efficiency = ONNX "
              "Runtime batch-1 speed-up / dense-MACs ratio: how much of the MACs saving reaches the runtime.")


@dataclass
class Section:
    """One data set: its runs are never set beside those of another data set."""

    data: str
    rows: list[RunRow]
    plots: list[Plot]
    notes: list[str]
    pairs: list[Pair] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)


def sections(rows: list[RunRow], chosen: Sequence[str] | None, tolerance: float = 0.5) -> list[Section]:
    """One Section per data set, in name order, with per-layer figures of the runs named in `chosen`
    (default: the sparsest run of each method); the headline allows `tolerance` points of accuracy loss."""
    for_layers = layer_runs(rows, chosen)
    out = []
    for data in sorted({r.data for r in rows}):
        rs = [r for r in rows if r.data == data]
        acc = [r for r in rs if r.accuracy is not None]
        notes = []
        no_acc = [r.name for r in rs if r.accuracy is None]
        if no_acc:
            why = "synthetic data" if all(r.synthetic for r in rs if r.accuracy is None) else "no accuracy measured"
            notes.append(f"Left out of the accuracy plots ({why}, accuracy is meaningless or absent): "
                         + ", ".join(no_acc) + ".")
        no_lat = [r.name for r in acc if r.latency_ms(*MAIN_LATENCY) is None]
        if no_lat:
            notes.append("No ONNX Runtime latency at batch 1, 1 thread, so not in the latency plot: "
                         + ", ".join(no_lat) + ".")
        plots = (accuracy_plots(rs, data) + [layers_figure(r) for r in for_layers if r.data == data]
                 + [steps_figure(r) for r in rs if r.steps and not r.synthetic])
        if not any(r.method == "dense" for r in rs):
            notes.append("No dense run of this data set in the collection: ratios are blank.")
        ps = pairs(rs)
        out.append(Section(data, rs, plots, notes, ps, headline(ps, tolerance)))
    return out


def intro(rows: list[RunRow], unfinished: list[Path], timing: dict | None = None) -> list[str]:
    """The paragraphs before the first data set: what the ratios mean, the training budgets, where the
    latencies come from (`timing`: what retime did, None without it) and the runs left out unfinished."""
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


def _budgets(rows: list[RunRow]) -> list[str]:
    """One line per model and training budget (data options, optimiser, schedule; the seeds run with it):
    what the accuracies in the tables were trained with."""
    seen: dict[tuple, tuple[RunRow, set]] = {}
    for r in rows:
        if r.training.schedule:
            seen.setdefault((r.data, r.model, *r.training.key), (r, set()))[1].add(r.training.seed)
    lines = []
    for (data, model, *_), (r, seeds) in sorted(seen.items(), key=lambda kv: kv[0]):
        shown = ", ".join(str(x) for x in sorted(x for x in seeds if x is not None)) or "?"
        lines.append(f"{model} on {data} ({r.training.data_options}): {r.training.schedule}; seed(s) {shown}.")
    if not lines:
        return []
    return ["Training budgets, from the runs' configs (IMP trains this budget at every level): " + " ".join(lines)]
