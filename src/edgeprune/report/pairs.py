"""How runs relate: every run to the dense fp32 run of its model and data set (the ratios in the tables), a
DNNShifter run to the sparse run it shrank, an INT8 run to the fp32 run it was quantised from, and a Reconvene run
(of either precision) to the unstructured fp32 run it stands in for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import kinds
from .collect import MAIN_LATENCY, RunRow


def relate(rows: list[RunRow]) -> None:
    """Link DNNShifter runs to their sources and every run to its dense run (ratios)."""
    _link_sources(rows)
    _dense_ratios(rows)


def group_key(r: RunRow) -> tuple:
    """Runs comparable with each other: same data set (real or synthetic), model and model options."""
    return r.data, r.synthetic, r.model, json.dumps(r.model_kwargs, sort_keys=True)


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
    # a Reconvene run's layers, and those of a run made smaller from another's (DNNShifter's), are not dense-shaped
    smaller = r.method.startswith("reconvene") or _from_source(r.method)
    return {} if smaller else {x["layer"]: x["shape"] for x in r.layers}


def _from_source(method: str) -> bool:
    """Whether runs labelled `method` are of a run kind made from another run (kinds/: DNNShifter's)."""
    kind = kinds.by_method(method)
    return kind is not None and kind.from_source


def _dense_ratios(rows: list[RunRow]) -> None:
    dense: dict[tuple, RunRow] = {}
    shapes: dict[tuple, dict[str, list[int]]] = {}
    for r in rows:
        if r.method == "dense" and r.profile.precision == "fp32":
            dense.setdefault(group_key(r), r)
        shapes.setdefault(group_key(r), {}).update({**_masked_shapes(r), **r.dense_layers})
    for r in rows:
        r.dense_layers = {**shapes.get(group_key(r), {}), **r.dense_layers}
        d = dense.get(group_key(r))
        if d is None:
            continue
        p, q = d.profile, r.profile
        r.dense_run = d.name
        r.compression = p.prunable_params / q.prunable_nonzero if q.prunable_nonzero else None
        r.size_x_fp32 = p.bytes_fp32 / q.bytes_fp32
        r.size_x_gzip = p.bytes_gzip / q.bytes_gzip
        r.size_x_onnx = p.bytes_onnx / q.bytes_onnx if p.bytes_onnx and q.bytes_onnx else None
        t0, t1 = d.latency_ms(*MAIN_LATENCY), r.latency_ms(*MAIN_LATENCY)
        r.speedup = t0 / t1 if t0 and t1 else None
        if p.accuracy is not None and q.accuracy is not None:
            r.accuracy_delta = 100 * (q.accuracy - p.accuracy)


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
    def onnx_x(self) -> float | None:  # the deployable files, whatever their precision
        return self._ratio(self.counterpart.profile.bytes_onnx, self.run.profile.bytes_onnx)

    @property
    def onnx_gzip_x(self) -> float | None:
        return self._ratio(self.counterpart.profile.bytes_onnx_gzip, self.run.profile.bytes_onnx_gzip)

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
    from ..methods.pai import PaIOptions

    pai_keys = set(PaIOptions.__dataclass_fields__)
    out = []
    for r in rows:
        if r.method.startswith("reconvene"):
            want = {k: v for k, v in r.options_full.items() if k in pai_keys}
            match = [c for c in rows if c.method == want.get("criterion") and group_key(c) == group_key(r)
                     and c.budget == r.budget and c.options_full == want and c.profile.precision == "fp32"]
        elif (_from_source(r.method) or r.profile.precision != "fp32") and r.source:
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
    ps = [p for p in ps if p.run.method != p.counterpart.method]  # an INT8 copy beside its source is not structure
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
