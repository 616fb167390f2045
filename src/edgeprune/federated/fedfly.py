"""FedFly: a device that moves to another edge server mid-training continues there, against the baseline that
restarts it.

Migration (`split.Edge.step` with `move_to`): the source edge checkpoints the device's server-side state (iteration,
weights, optimiser state, and the activation gradient the move kept from the device), sends it to the destination
edge over gRPC and drops it; the device resumes at the destination, which first hands it that gradient. The
restart baseline cannot recover the server-side half, and a device half trained against a lost server half is of
no use with a fresh one: the device's training starts over at the destination.

`train` runs one device's split training over rounds with one move, either way, and times it on the wall clock
(device and edges are processes on this machine; no link is emulated, so the times are compute and loopback only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from . import split as sp


def move_point(iterations: Sequence[int], fraction: float) -> tuple[int, int]:
    """(round, iteration in it), both from 0, at which `fraction` of all iterations are done."""
    if not 0 < fraction < 1:
        raise ConfigError(f"move at {fraction!r} of training: give a fraction strictly between 0 and 1, e.g. 0.5")
    at = round(fraction * sum(iterations))
    for r, n in enumerate(iterations):
        if at < n:
            return r, at
        at -= n
    raise AssertionError("unreachable")


def train(make_model: Callable[[], nn.Module], split: int, batches: Callable[[int], list], rounds: int,
          optim: sp.Optim, source: str, destination: str, move_at: float | None, restart: bool = False,
          device: str = "device", rtt_ms: float = 0.0, lan: dict[str, str] | None = None) -> dict:
    """Train one device for `rounds` rounds (`batches(r)` the r-th round's batches), starting with the edge at
    `source`; at `move_at` of the iterations it moves to `destination`, migrating (FedFly) or, with `restart`,
    starting over there. `rtt_ms`: slept before each call to an edge (an emulated link's RTT, see emulate); `lan`: as
    split.train_round's. Returns
    the final model, wall seconds, iterations run and the migration's cost."""
    model = make_model()
    sizes = [len(batches(r)) for r in range(rounds)]
    where = move_point(sizes, move_at) if move_at is not None else None
    t0 = time.perf_counter()
    edge, record = sp.EdgeClient(source, rtt_ms=rtt_ms), {"iterations": 0, "migration_s": 0.0, "move_failed": None}
    r = 0
    while r < rounds:
        move = (where[1], destination) if where is not None and where[0] == r else None
        if move is not None and restart:
            # the round runs up to the move; then the server half is lost and, with it, all training so far
            stats = sp.train_round(model, split, batches(r)[:move[0]], optim.at(r + 1), device=device, edge=edge,
                                   lan=lan)
            record["iterations"] += stats.iterations
            edge.close()
            edge, model, where, r = sp.EdgeClient(destination, rtt_ms=rtt_ms), make_model(), None, 0
            continue
        stats = sp.train_round(model, split, batches(r), optim.at(r + 1), device=device, edge=edge, move=move,
                               lan=lan)
        record["iterations"] += stats.iterations
        if stats.moved_to:
            edge.close()
            edge = sp.EdgeClient(stats.moved_to, rtt_ms=rtt_ms)
            record["migration_s"] = stats.migration_s
        record["move_failed"] = record["move_failed"] or stats.move_failed
        r += 1
    edge.close()
    return {**record, "model": model, "seconds": time.perf_counter() - t0, "planned_iterations": sum(sizes),
            "mode": "restart" if restart else "migrate", "move_at": move_at, "clock": "wall"}


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Bit-identical state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
