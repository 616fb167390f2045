"""Pruning to a budget: find the least sparsity at which a method's model meets a latency, size or
MACs budget, by bisection over measured probes (latency on this machine's ONNX Runtime; size and
MACs counted). Each probe prunes a fresh, identically seeded model, so the chosen sparsity gives
exactly the probed architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import nn

from . import export, measure
from .errors import ConfigError

METRICS = {"latency": "ms", "size": "MiB", "macs": "MACs"}


@dataclass
class Target:
    metric: str  # latency | size | macs
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
        """The model's cost in the budget's unit (ms of ONNX Runtime p50, MiB of fp32 state, dense MACs)."""
        if self.metric == "latency":
            onnx = export.to_onnx_bytes(model, input_shape, check=False)
            return measure.latency_onnx(onnx, input_shape, self.batch_size, self.threads, runs=30, warmup=5).p50_ms
        if self.metric == "size":
            return measure.state_bytes(model)[0] / 2**20
        return float(measure.count_macs(model, input_shape)[0])

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

    Raises ConfigError (naming the closest probe) when even the highest sparsity does not meet it.
    """
    probes: list[dict] = []

    def probe(s: float) -> float:
        cost = target.cost(pruned_at(s), input_shape)
        probes.append({"sparsity": s, "cost": cost, "meets": cost <= target.value})
        if progress:
            progress(probes[-1])
        return cost

    if (c := probe(0.0)) <= target.value:
        return Search(0.0, c, probes)
    if probe(target.max_sparsity) > target.value:
        closest = min(probes, key=lambda p: p["cost"])
        raise ConfigError(
            f"no sparsity meets the budget {target.describe()}: the closest probe was "
            f"{target.describe(closest['cost'])} at sparsity {closest['sparsity']:.3f}. Raise the budget, or {hint}"
        )
    lo, hi = 0.0, target.max_sparsity  # cost(lo) > budget >= cost(hi)
    while len(probes) < target.max_probes:
        best = min((p for p in probes if p["meets"]), key=lambda p: p["sparsity"])
        if best["cost"] >= target.value * (1 - target.tolerance) or hi - lo < 1e-3:
            break
        mid = (lo + hi) / 2
        if probe(mid) <= target.value:
            hi = mid
        else:
            lo = mid
    best = min((p for p in probes if p["meets"]), key=lambda p: p["sparsity"])
    return Search(best["sparsity"], best["cost"], probes)
