"""Pruning to a budget: find the least sparsity at which a method's model meets a latency, size or
MACs budget, by bisection over measured probes (latency on this machine's ONNX Runtime; size and
MACs counted). Each probe prunes a fresh, identically seeded model, so the chosen sparsity gives
exactly the probed architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import nn

from . import export, measure, timing
from .errors import ConfigError

METRICS = {"latency": "ms", "size": "MiB", "macs": "MACs", "params": "parameters"}
PROBE_RUNS = 50  # timed runs per latency probe
CONFIRM_RUNS = 150  # the chosen model is timed again, longer, before it is accepted


@dataclass
class Target:
    metric: str  # latency | size | macs | params
    value: float
    batch_size: int = 1  # latency only
    threads: int = 1
    tolerance: float = 0.05  # stop when within this fraction below the budget
    max_probes: int = 10
    max_sparsity: float = 0.995

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"unknown budget metric {self.metric!r}; use one of {list(METRICS)}")
        if not self.value > 0:
            raise ConfigError(f"the {self.metric} budget must be positive, got {self.value}")
        if self.max_probes < 2:
            raise ConfigError(f"max_probes must be >= 2, got {self.max_probes}")

    def cost(self, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        """The model's cost in the budget's unit (ms of ONNX Runtime p50, MiB of fp32 state, dense MACs,
        parameters: masked-out weights count, only a physically smaller model costs less)."""
        if self.metric == "latency":
            return self.latency(export.to_onnx_bytes(model, input_shape, check=False), input_shape)
        if self.metric == "size":
            return measure.state_bytes(model)[0] / 2**20
        if self.metric == "params":
            return float(measure.count_params(model)[0])
        return float(measure.count_macs(model, input_shape)[0])

    def latency(self, onnx: bytes, input_shape: tuple[int, ...], runs: int = PROBE_RUNS) -> float:
        return timing.latency_onnx(onnx, input_shape, self.batch_size, self.threads, runs=runs, warmup=10).p50_ms

    def describe(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        extra = (f" (batch {self.batch_size}, {self.threads} thread(s), ONNX Runtime p50)"
                 if self.metric == "latency" else "")
        return f"{self.metric} {v:.4g} {METRICS[self.metric]}{extra}"


@dataclass
class Search:
    sparsity: float
    cost: float
    probes: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


UNSTRUCTURED_HINT = ("use a structured method (--method reconvene): unstructured masks do not make a model smaller "
                     "or faster")


def search(target: Target, pruned_at: Callable[[float], nn.Module], input_shape: tuple[int, ...],
           progress: Callable[[dict], None] | None = None, hint: str = UNSTRUCTURED_HINT) -> Search:
    """The least sparsity in [0, target.max_sparsity] whose pruned model costs at most the budget.

    A latency probe is one measurement on a machine whose load changes, so the model a bisection picks is
    timed again, CONFIRM_RUNS times in a fresh session, before it is accepted; if that says it is over the
    budget after all, it counts as over and the search goes on above it. Raises ConfigError (naming the
    closest probe) when even the highest sparsity does not meet the budget.
    """
    probes: list[dict] = []
    onnx: dict[float, bytes] = {}  # latency: each probe's model, kept to time it again

    def probe(s: float) -> float:
        model = pruned_at(s)
        if target.metric == "latency":
            onnx[s] = export.to_onnx_bytes(model, input_shape, check=False)
            cost = target.latency(onnx[s], input_shape)
        else:
            cost = target.cost(model, input_shape)
        probes.append({"sparsity": s, "cost": cost, "meets": cost <= target.value})
        if progress:
            progress(probes[-1])
        return cost

    def confirmed(p: dict) -> bool:
        """Whether probe `p` still meets the budget when timed again (size and MACs are exact: always)."""
        if target.metric != "latency" or "confirmed_cost" in p:
            return p["meets"]
        p["confirmed_cost"] = target.latency(onnx[p["sparsity"]], input_shape, runs=CONFIRM_RUNS)
        p["meets"] = p["confirmed_cost"] <= target.value
        if progress:
            progress({**p, "confirmation": True})
        return p["meets"]

    def unreachable() -> ConfigError:
        closest = min(probes, key=lambda p: p.get("confirmed_cost", p["cost"]))
        return ConfigError(
            f"no sparsity meets the budget {target.describe()}: the closest probe was "
            f"{target.describe(closest.get('confirmed_cost', closest['cost']))} at sparsity "
            f"{closest['sparsity']:.3f}. Raise the budget, or {hint}"
        )

    if probe(0.0) <= target.value and confirmed(probes[0]):
        return Search(0.0, probes[0]["confirmed_cost" if "confirmed_cost" in probes[0] else "cost"], probes)
    if probe(target.max_sparsity) > target.value:
        raise unreachable()
    lo = 0.0  # the densest sparsity known to be over the budget
    while True:
        meeting = [p for p in probes if p["meets"]]
        if not meeting:
            raise unreachable()
        best = min(meeting, key=lambda p: p["sparsity"])
        hi = best["sparsity"]
        if (best["cost"] >= target.value * (1 - target.tolerance) or hi - lo < 1e-3
                or len(probes) >= target.max_probes):
            if confirmed(best):
                return Search(best["sparsity"], best.get("confirmed_cost", best["cost"]), probes)
            lo = max(lo, best["sparsity"])  # over the budget after all: search above it
            continue
        mid = (lo + hi) / 2
        if probe(mid) > target.value:
            lo = mid
