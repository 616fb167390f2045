"""The memory accountant: what training a layer (with its head) or a block of layers costs, and a measurement of it.

Per unit (a layer and the head it learns from, or a whole model trained by backpropagation):
- parameters, their gradients and the optimiser's state (SGD with momentum: one buffer per parameter);
- the tensors autograd saves for the backward pass, counted with `torch.autograd.graph.saved_tensors_hooks` on
  a training forward (one count per storage, parameters left out: they are counted above);
- the gradients in flight during the backward pass, replayed on the autograd graph: a saved tensor is freed once
  the last node that saved it has run, a gradient once the next node has consumed it; the peak of the two is
  taken at batch 2 and 4, so the part that grows with the batch is told from the part that does not;
- the input batch, and a workspace the size of the largest parameter (its gradient is computed there, then
  stored). No fixed overhead is added: a fixed 2 MiB fitted earlier was the code pages the old measurement counted
  (see `_child`); on VGG-11 and ResNet-20 blocks the sum above is within 0.96-1.18 of the measured peak.

A block trains its layers one after another on each batch, freeing each layer's graph before the next runs
(plan.py, train.py): it holds every unit's parameters, gradients and optimiser state, and at a time the
activations of one unit. So `Cost.at(batch)` for one unit and `block_bytes(costs, batch)` for a block.

`measure_peak` checks a prediction: it trains the block for a few steps in a fresh process (CPU: the peak resident
set above what the process held just before, the kernel's high-water mark reset through /proc/self/clear_refs;
CUDA: `torch.cuda.max_memory_allocated` above the allocation before).
"""

from __future__ import annotations

import collections
import copy
import functools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import EdgePruneError
from .watch import MMAP_THRESHOLD

MOMENTUM_BUFFERS = 1  # SGD with momentum keeps one buffer the size of each parameter
PROBE_BATCHES = (2, 4)  # batch norm in training needs more than one value per channel


class MeasurementFailed(EdgePruneError):
    """The memory measurement process failed."""


@dataclass(frozen=True)
class Cost:
    """Training memory of one unit, in bytes."""

    name: str
    params: int  # parameter bytes (trainable)
    state: int  # optimiser state bytes
    saved_per_sample: float  # what autograd saves for the backward pass, per sample
    peak_per_sample: float  # the peak of saved activations and gradients in flight during a step, per sample
    peak_fixed: int  # the part of that peak that does not grow with the batch (BN statistics)
    input_per_sample: int
    output_per_sample: int
    largest_param: int  # the largest parameter tensor (its gradient is computed in a workspace, then stored)

    @property
    def persistent(self) -> int:
        """Parameters, gradients and optimiser state: held for as long as the unit trains."""
        return 2 * self.params + self.state

    def activations(self, batch: int) -> float:
        """What one training step at `batch` adds while this unit runs (its input batch included)."""
        return batch * (self.peak_per_sample + self.input_per_sample) + self.peak_fixed + self.largest_param

    def at(self, batch: int) -> float:
        return self.persistent + self.activations(batch)

    def to_dict(self) -> dict:
        return asdict(self)


def block_bytes(costs: Sequence[Cost], batch: int) -> float:
    """Predicted peak of training the units `costs` block-wise at `batch`: all their persistent state, and the
    activations of the most demanding one (each unit's graph is freed before the next runs; the block's input
    batch stays alive throughout)."""
    held = batch * costs[0].input_per_sample
    return (sum(c.persistent for c in costs)
            + max(c.activations(batch) + (held if k else 0) for k, c in enumerate(costs)))


def cost(name: str, units: Sequence[nn.Module], input_shape: Sequence[int], num_classes: int,
         state_buffers: int = MOMENTUM_BUFFERS) -> Cost:
    """The Cost of training `units` (applied in sequence, the last one yielding logits; the output of the ones
    before it is kept, as the next layer's input) from inputs of per-sample shape `input_shape`. The modules are
    copied: their BN statistics are left as they were."""
    net = copy.deepcopy(nn.Sequential(*units)).train()
    params = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    (b1, saved1, peak1, out1), (b2, saved2, peak2, _) = (_step(net, input_shape, b, num_classes)
                                                       for b in PROBE_BATCHES)
    per_sample = (peak2 - peak1) / (b2 - b1)
    largest = max((p.numel() * p.element_size() for p in net.parameters()), default=0)
    return Cost(name, params, state_buffers * params, (saved2 - saved1) / (b2 - b1), per_sample,
                max(0, int(peak1 - b1 * per_sample)), int(torch.Size(input_shape).numel()) * 4, out1 // b1, largest)


def _step(net: nn.Module, input_shape: Sequence[int], batch: int, num_classes: int) -> tuple[int, int, int, int]:
    """(batch, saved bytes, peak bytes, output bytes) of one training step of `net` at `batch`, replayed from the
    autograd graph: the tensors the forward saves (saved_tensors_hooks; one count per storage, parameters and the
    input left out), each freed once the last backward node that saved it has run (unless kept by the caller:
    the output before the last unit), and the gradients in flight (produced by a backward node, not yet consumed
    by the next; the parameters' gradients are counted as persistent state)."""
    own = {p.untyped_storage().data_ptr() for p in net.parameters()}
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            sizes[ptr] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(batch, *input_shape)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = x
        for m in list(net)[:-1]:
            h = m(h)
        loss = nn.functional.cross_entropy(net[-1](h), torch.randint(0, num_classes, (batch,)))
    x_ptr = x.untyped_storage().data_ptr()
    sizes.pop(x_ptr, None)
    kept = {h.untyped_storage().data_ptr()} - {x_ptr}
    holds = {node: {ptr for t in _saved_by(node) if (ptr := t.untyped_storage().data_ptr()) in sizes}
             for node in _nodes(loss.grad_fn)}
    users = collections.Counter(ptr for ptrs in holds.values() for ptr in ptrs)
    live = dict(sizes)
    track = {"pending": 0, "peak": sum(live.values())}

    def after(node, grad_inputs, grad_outputs) -> None:
        # a gradient a parameter's AccumulateGrad takes becomes its .grad: persistent state, counted there
        made = _bytes(g for g, (nxt, _) in zip(grad_inputs, node.next_functions, strict=False)
                      if type(nxt).__name__ != "AccumulateGrad")
        track["peak"] = max(track["peak"], sum(live.values()) + track["pending"] + made)
        track["pending"] += made - (0 if type(node).__name__ == "AccumulateGrad" else _bytes(grad_outputs))
        for ptr in holds[node]:
            users[ptr] -= 1
            if users[ptr] == 0 and ptr not in kept:
                live.pop(ptr, None)

    handles = [node.register_hook(functools.partial(after, node)) for node in holds]
    loss.backward()
    for handle in handles:
        handle.remove()
    out = h.numel() * h.element_size() if h is not x else 0
    return batch, sum(sizes.values()), track["peak"], out


def _nodes(root) -> list:
    """Every node of the autograd graph below `root`."""
    seen, todo = {}, [root]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen[node] = None
        todo.extend(n for n, _ in node.next_functions)
    return list(seen)


def _saved_by(node) -> list[torch.Tensor]:
    """The tensors backward node `node` saved (its `_saved_*` attributes; a Python Function's saved_tensors)."""
    found = []
    for name in dir(node):
        if name.startswith("_saved_") or name == "saved_tensors":
            value = getattr(node, name, None)
            found += [v for v in (value if isinstance(value, tuple | list) else [value]) if isinstance(v, torch.Tensor)]
    return found


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def measure_peak(model_spec: dict, image_shape: Sequence[int], first: int, stop: int, heads: Sequence[dict | None],
                 batch: int, mode: str = "local", device: str = "cpu", steps: int = 2, lr: float = 0.01,
                 momentum: float = 0.9) -> int:
    """Bytes training layers first..stop-1 of the model `model_spec` (a ModelSpec dict) with their `heads`
    (AuxHead options, None: the model's classifier) takes at `batch`, measured in a fresh process over `steps`
    steps. `mode` "local": block-wise local learning (step.local_step); "backprop": the whole model, end to end
    (first, stop and heads ignored)."""
    job = {"spec": model_spec, "image_shape": list(image_shape), "first": first, "stop": stop, "heads": list(heads),
           "batch": batch, "mode": mode, "device": device, "steps": steps, "lr": lr, "momentum": momentum}
    # glibc returns blocks above this size to the system when they are freed, so the resident set follows what is
    # allocated (its default threshold adapts upwards, and freed tensors then linger in the heap at random)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}  # as the training process (watch.py)
    done = subprocess.run([sys.executable, "-m", __name__, json.dumps(job)], capture_output=True, text=True,
                          timeout=900, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise MeasurementFailed(f"memory measurement of {model_spec['name']} layers {first}..{stop - 1} at batch "
                                f"{batch} failed: {tail[0]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["bytes"])


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _child(job: dict) -> int:
    """Run in the fresh process: build the block on the meta device (no memory), train it one step to load every
    kernel it runs, free it, then materialise it afresh and train it, measuring only that."""
    from ..models import ModelSpec, create
    from ..models.chain import AuxHead, cut
    from .step import local_step

    torch.set_num_threads(1)
    dev = torch.device(job["device"])
    spec = ModelSpec.from_dict(job["spec"])
    with torch.device("meta"):
        model = create(spec.name, spec.num_classes, spec.in_channels, **spec.kwargs)
    chain = cut(model, spec.name)
    if job["mode"] == "backprop":
        units, heads, shape = [model], [None], tuple(job["image_shape"])
    else:
        units = chain.layers[job["first"]:job["stop"]]
        heads = [chain.classifier if h is None else AuxHead(num_classes=spec.num_classes, **h) for h in job["heads"]]
        with torch.device("meta"):  # the block's input shape, traced without memory
            h = torch.empty(1, *job["image_shape"])
            for layer in chain.layers[:job["first"]]:
                h = layer(h)
        shape = tuple(h.shape[1:])

    def train(steps: int) -> None:
        pairs = [(u.to_empty(device=dev), None if h is None else h.to_empty(device=dev))
                 for u, h in zip(units, heads, strict=True)]
        for m in (m for pair in pairs for m in pair if m is not None):
            for p in m.parameters():
                nn.init.normal_(p, std=0.05)
            for b in m.buffers():
                b.fill_(1.0)
        opts = [torch.optim.SGD([p for m in pair if m is not None for p in m.parameters()], lr=job["lr"],
                                momentum=job["momentum"]) for pair in pairs]
        for _ in range(steps):
            x = torch.randn(job["batch"], *shape, device=dev)
            y = torch.randint(0, spec.num_classes, (job["batch"],), device=dev)
            if job["mode"] == "backprop":
                opts[0].zero_grad(set_to_none=True)
                nn.functional.cross_entropy(pairs[0][0](x), y).backward()
                opts[0].step()
            else:
                local_step([u for u, _ in pairs], [h for _, h in pairs], opts, x, y)
            del x, y
        # back to the meta device: the block's memory is freed (glibc returns it, see measure_peak)
        for m in (m for pair in pairs for m in pair if m is not None):
            m.to_empty(device="meta")
        del pairs, opts

    # warm-up: one step of the very block, at the very batch, outside the measured window. It loads the code of
    # every kernel the step runs (file-backed pages that count in the resident set, and differ between CPUs) and
    # starts autograd's worker; then the block is freed and measured from scratch.
    train(1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark (VmHWM) to the present resident set
        base, file_base = _status("VmRSS"), _status("RssFile")
    train(job["steps"])
    if dev.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # code pages a kernel still faults in during the window are not the block's training memory
    return _status("VmHWM") - base - max(0, _status("RssFile") - file_base)


if __name__ == "__main__":
    print(json.dumps({"bytes": _child(json.loads(sys.argv[1]))}))
