"""What a serving policy is, which the registry (registry.py) and the policies (policy.py, plugins) share: the
`Window` a policy sees, the `Decision` it returns, the `Policy` base class, and the tasks a policy may serve."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np

from ..portfolio import Manifest

TASKS = ("classify", "detect")


@dataclass
class Window:
    """What the active variant did since the last decision."""

    variant: str
    latencies_ms: list[float]  # inference time of each request (not queueing, not HTTP)
    seconds: float
    # each request's output, for policies that read them: an array, or a detector's Detections per sample
    outputs: list = field(default_factory=list)

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 90))

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))


@dataclass
class Decision:
    policy: str
    active: str
    want: str
    budget_met: bool
    inputs: dict
    reason: str
    time: float = field(default_factory=time.time)


@dataclass
class Policy:
    """Base: `params()` for the API, `decide(window)` once per window."""

    manifest: Manifest
    name: str = "fixed"
    reads_outputs: ClassVar[bool] = False  # whether the server must keep each request's output in the window
    tasks: ClassVar[tuple[str, ...]] = TASKS  # the portfolios it chooses for (set by `register`)

    def params(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("manifest", "name") and not k.startswith("_")}

    def decide(self, window: Window) -> Decision:
        raise NotImplementedError
