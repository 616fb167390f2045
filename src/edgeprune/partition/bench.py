"""Scission's benchmark, per tier: every block of a model timed on this machine as that tier (threads, CPU quota),
fed the previous block's real output, with what each block's output weighs on the wire.

The file it writes (`bench-<tier>.json`) is all the planner needs from a tier, so the same command can run on a real
device and its file be copied back beside the emulated ones.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from .. import emulate, measure, segments
from ..errors import ConfigError, EdgePruneError
from ..export import ort_session
from ..progress import Reporter, reporter
from . import hop, transfer, wire
from .records import BENCH_FORMAT, Bench, Block, TransferTiming, read_bench

FORMAT = BENCH_FORMAT


def source_model(source: str, input_shape: tuple[int, ...] | None = None, num_classes: int = 1000,
                 seed: int = 0) -> tuple[bytes, str]:
    """(ONNX bytes, name) of a run folder (its model.onnx), an .onnx file, or a model name (`tv:vgg16`, weights
    drawn from `seed`, exported at `input_shape`, default 3x224x224, with `num_classes` outputs): every process
    that builds a name with the same seed gets the same ONNX model, so one tier's bench file, another's and
    `partition run` agree on it."""
    from ..runs import ONNX

    path = Path(source)
    if path.is_dir():
        if (path / "portfolio.json").is_file():
            raise ConfigError(f"{source!r} is a portfolio of several models; give one variant's file "
                              f"({path}/<variant>.onnx), or use `partition bench` / `plan --variants` on it")
        if not (path / ONNX).is_file():
            raise EdgePruneError(f"run {source!r} has no {ONNX}; write it with `edgeprune export {source} "
                                 f"--onnx {path / ONNX}`")
        return checked(path / ONNX), path.name
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ConfigError(f"ONNX file {source!r} does not exist; give a run folder, an .onnx file or tv:NAME")
        return checked(path), path.stem
    if not by_name(source):
        raise ConfigError(f"{source!r} is neither a run folder nor an .onnx file; give one, or a model name like "
                          "tv:vgg16")
    import torch

    from ..export import to_onnx_bytes
    from ..models import create

    shape = input_shape or (3, 224, 224)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create(source, num_classes=num_classes, in_channels=shape[0]).eval()
    return to_onnx_bytes(model, shape), source


def by_name(source: str) -> bool:
    """Whether `source` names a model to build (tv:vgg16), not a run folder or an ONNX file."""
    path = Path(source)
    return not path.exists() and os.sep not in source and not path.suffix


def portfolio_models(source: str | Path) -> dict[str, bytes] | None:
    """{variant id: ONNX bytes} of a portfolio folder (verified), None for any other source."""
    from .. import portfolio

    folder = Path(source)
    if not (folder / portfolio.MANIFEST).is_file():
        return None
    manifest = portfolio.load(folder)
    return {v.id: checked(folder / v.onnx, f"variant {v.id} of portfolio {folder}") for v in manifest.variants}


def checked(path: Path, what: str | None = None) -> bytes:
    """The bytes of ONNX file `path`, refused in one line if it is not a readable ONNX model. An INT8 model (QDQ or
    QOperator) is cut like an fp32 one: a cut may carry a float tensor or a quantised (uint8/int8) one, which
    travels as it is (wire.encode); the transfer layer and the fp16/int8 transfer dtypes apply to float cuts only."""
    import onnx

    what = what or str(path)
    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf's DecodeError, onnx's ValidationError: a truncated or foreign file
        raise ConfigError(f"{what} is not a readable ONNX model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else 'corrupt'}); export it again") from None
    return data


def run(
    onnx_model: bytes, name: str, tier: str, threads: int = 1, cpu_quota: float | None = None, runs: int = 30,
    warmup: int = 5, progress: Reporter | None = None, seed: int = 0, slowdown: float | None = None,
    max_tensors: int = 1,
) -> Bench:
    """Time every block of `onnx_model` as tier `tier` and return its bench record (records.Bench).

    One sample runs the blocks as a chain, each fed the previous one's output (timing blocks one at a time, over and
    over, finds their weights in cache and underestimated a chain 3x), then the transfer layers of every eligible
    cut, then the whole model. `runs` samples after `warmup`. A block's time (`ms`) is the mean of its samples, its
    median is recorded beside it: what adds up along a chain is the expected time, and the median of a short block
    leaves out the preemptions (on a shared machine) and CFS throttles (under a quota) that a longer run of blocks
    cannot escape; the sum of medians fell 2.3x short of the whole model's time on a busy 2-core machine. Worker
    threads do not spin between calls (with spinning, each block's idle workers took the cores of the next block, and
    2-thread blocks ran up to 10x slower than in one session). With a quota, its achieved slowdown on the whole model
    is measured and recorded. `slowdown` instead fits the quota to make this machine, as loaded now, that many
    times slower (emulate.quota_for_slowdown): on a busy machine a fixed quota may bind little or not at all.
    `max_tensors` > 1 also cuts where up to that many tensors cross (segments.load); such a block's outputs are
    all sent, and the transfer layer applies only to single-tensor cuts. Last, the fixed cost of one request on
    the transport `partition run` uses is measured (hop.measure) and recorded as `request`, and the transfer
    dtypes' encoding and decoding per value (wire.measure) as `wire`."""
    if runs < 30:
        raise ConfigError(f"--runs {runs}: a block's median needs at least 30 timed runs")
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    progress = reporter(progress)
    seg = segments.load(onnx_model, name, max_tensors)
    sessions = [ort_session(seg.block(i).SerializeToString(), threads, spin=False) for i in range(seg.n_blocks)]
    whole = ort_session(onnx_model, threads, spin=False)
    x = np.random.default_rng(seed).standard_normal((1, *seg.input_shape)).astype(np.float32)

    def chain(times: dict[str, list[float]] | None) -> list[list[np.ndarray]]:
        acts, outs = [x], []
        for i, sess in enumerate(sessions):
            t0 = time.perf_counter()
            acts = sess.run(None, dict(zip(seg.boundaries(i), acts, strict=True)))
            if times is not None:
                times[f"block {i}"].append((time.perf_counter() - t0) * 1e3)
            outs.append(acts)
        return outs

    outs = chain(None)
    calls = {"whole": lambda: whole.run(None, {seg.input: x})}
    tl_cuts = [i for i, a in enumerate(outs[:-1])  # the layer pools one float32 map (not an INT8 graph's uint8)
               if len(a) == 1 and a[0].dtype == np.float32 and transfer.eligible(a[0].shape[1:])]
    tl_bytes = {}
    for i in tl_cuts:
        shape = outs[i][0].shape[1:]
        down = ort_session(transfer.down_layer(shape, seg.model).SerializeToString(), threads, spin=False)
        up = ort_session(transfer.up_layer(shape, seg.model).SerializeToString(), threads, spin=False)
        pooled = down.run(None, {transfer.DOWN_IN: outs[i][0]})[0]
        tl_bytes[i] = int(pooled.nbytes)
        calls[f"tl down {i}"] = lambda s=down, a=outs[i][0]: s.run(None, {transfer.DOWN_IN: a})
        calls[f"tl up {i}"] = lambda s=up, a=pooled: s.run(None, {transfer.UP_IN: a})

    times: dict[str, list[float]] = {f"block {i}": [] for i in range(seg.n_blocks)} | {k: [] for k in calls}
    fitted = None
    if slowdown is not None:
        if cpu_quota is not None:
            raise ConfigError("give --cpu-quota or --slowdown, not both")
        fitted = emulate.quota_for_slowdown(calls["whole"], slowdown)
        cpu_quota = fitted["cpu_quota"]
    quota = emulate.CpuQuota(cpu_quota) if cpu_quota is not None else None
    try:
        slowdown = None
        if quota is not None:
            progress.note(f"{tier}: measuring the slowdown of a {cpu_quota:g}-CPU quota on the whole model")
            slowdown = emulate.measure_slowdown(calls["whole"], quota)
        for k in range(warmup + runs):
            sample = times if k >= warmup else {key: [] for key in times}
            chain(sample)
            for key, call in calls.items():
                t0 = time.perf_counter()
                call()
                sample[key].append((time.perf_counter() - t0) * 1e3)
            progress.update(f"bench {tier}", k + 1, warmup + runs)
        progress.end(f"bench {tier}")
        progress.note(f"{tier}: timing a request's fixed cost on the transport (HTTP over loopback)")
        request = hop.measure(quota, runs=runs)
        codecs = wire.measure(runs=runs)
    finally:
        if quota is not None:
            quota.close()
    ms = {key: float(np.mean(v)) for key, v in times.items()}

    blocks = []
    for i in range(seg.n_blocks):
        nodes = seg.block(i).graph.node
        out = outs[i]
        blocks.append(Block(
            index=i, first_node=nodes[0].name, last_node=nodes[-1].name, nodes=len(nodes),
            output="+".join(seg.boundaries(i + 1)), output_op=nodes[-1].op_type,
            output_shape=list(out[0].shape[1:]) if len(out) == 1 else None,  # None: several tensors cross
            output_shapes=[list(a.shape[1:]) for a in out], output_dtypes=[str(a.dtype) for a in out],
            output_bytes=sum(int(a.nbytes) for a in out), ms=ms[f"block {i}"],
            median_ms=float(np.median(times[f"block {i}"])),
            tl=(TransferTiming(tl_bytes[i], ms[f"tl down {i}"], ms[f"tl up {i}"]) if i in tl_cuts else None),
        ))
    total = sum(b.ms for b in blocks)
    return Bench(
        model=name, onnx_sha256=hashlib.sha256(onnx_model).hexdigest(),
        input=seg.input, input_shape=list(seg.input_shape), input_bytes=int(x.nbytes),
        tier=tier, threads=threads, max_tensors=max_tensors,
        device=(quota.describe() | (fitted or {})) if quota is not None else {"cpu_quota": None},
        slowdown=slowdown, clock="wall", runs=runs, warmup=warmup, statistic="mean", request=request, wire=codecs,
        blocks=blocks, whole_ms=ms["whole"], sum_blocks_ms=total, blocks_over_whole=total / ms["whole"],
        environment=measure.environment(),
    )


def load(path: str | Path) -> Bench:
    """A bench file, checked to be one, field by field (records.read_bench)."""
    return read_bench(path)


def path_for(out_dir: str | Path, tier: str) -> Path:
    return Path(out_dir) / f"bench-{tier}.json"
