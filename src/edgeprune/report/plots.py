"""Plots (matplotlib's object API on the Agg canvas: no display, no global pyplot state): accuracy against
sparsity, latency and size with the Pareto front named, and per-layer figures of chosen runs."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from .collect import MAIN_LATENCY, RunRow

MAX_LAYER_FIGURES = 6
FIGSIZE, DPI = (7.0, 4.5), 120
LAYERS_FIGSIZE = (7.0, 8.0)  # two panels: per-layer density above, per-group width below


@dataclass
class Plot:
    """One PNG of the report: its file name, its caption, its bytes."""

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


def slug(s: str) -> str:
    """`s` as a file-name and anchor part."""
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


def _accuracy_vs_sparsity(rows: list[RunRow], data: str, style: _Style) -> Plot:
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
    return Plot(f"{slug(data)}-accuracy-vs-sparsity.png",
                 "Accuracy against requested sparsity, one line per method (dotted: the dense run).", _png(fig))


def accuracy_plots(rows: list[RunRow], data: str) -> list[Plot]:
    """Accuracy against requested sparsity, ONNX Runtime latency and size, of the runs of data set `data`
    that have an accuracy (colours and markers assigned over all `rows`). A cost no run has gets no plot."""
    style = _Style(rows)
    acc = [r for r in rows if r.accuracy is not None]
    if not acc:
        return []
    plots = [_accuracy_vs_sparsity(acc, data, style)]
    for plot in (
        _accuracy_vs_cost(acc, data, style, lambda r: r.latency_ms(*MAIN_LATENCY), "ONNX Runtime latency",
                          "ONNX Runtime CPU latency, p50, batch 1, 1 thread (ms)", "latency"),
        _accuracy_vs_cost(acc, data, style, lambda r: r.profile.bytes_fp32 / 2**20, "size",
                          "model size, fp32 state_dict (MiB)", "size"),
    ):
        if plot is not None:
            plots.append(plot)
    return plots


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
                      what: str, xlabel: str, stem: str) -> Plot | None:
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
    return Plot(f"{slug(data)}-accuracy-vs-{stem}.png",
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


def layers_figure(r: RunRow) -> Plot:
    """Weights kept per layer as a share of the dense layer; for Reconvene, also the channel width of each
    coupled group before and after conversion."""
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
    return Plot(f"{slug(r.data)}-layers-{slug(r.name)}.png", f"{r.name}: {caption}.", _png(fig))


def steps_figure(r: RunRow) -> Plot:
    """The trade-off curve of a run recorded step by step (Taylor): validation accuracy against ONNX Runtime
    batch-1 latency after each step, the kept step marked."""
    fig = _figure()
    ax = fig.add_subplot()
    ms, acc = [s["ort_b1_ms"] for s in r.steps], [100 * s["val_accuracy"] for s in r.steps]
    ax.plot(ms, acc, "o-", color="tab:blue", label="after each step")
    for s, x, y in zip(r.steps, ms, acc, strict=True):
        ax.annotate(f"{s['step']}: {s['params'] / r.steps[0]['params']:.0%}", (x, y), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    if r.kept_step is not None:
        ax.plot([ms[r.kept_step]], [acc[r.kept_step]], "*", color="tab:red", ms=14, label="kept")
    ax.set(xlabel="ONNX Runtime p50, batch 1, 1 thread (ms), timed as each step ended",
           ylabel="validation accuracy (%)")
    ax.set_title(f"{r.name}: {r.method}, {r.data}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return Plot(f"{slug(r.data)}-steps-{slug(r.name)}.png", f"{r.name}: validation accuracy against latency after "
                "each step (labels: step: parameters kept); the starred step is the run's model.", _png(fig))


def layer_runs(rows: list[RunRow], chosen: Sequence[str] | None) -> list[RunRow]:
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
