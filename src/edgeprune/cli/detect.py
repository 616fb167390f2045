"""`edgeprune detect train|profile|run`: a detector family on a SYNTHETIC video stream, its ROMA profile, and
run-time detector choice (ROMA, TOD, fixed, oracle) scored by real-time AP@0.5 (edgeprune.detection)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..detection.stream import SEGMENT_FRAMES
from .common import console, handled, progress_bars

Seed = Annotated[int, typer.Option(help="Seed of the stream.")]
PerSegment = Annotated[int, typer.Option(help="Frames per scenario segment.")]


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Detectors on a synthetic video stream, chosen at run time without labels (ROMA).",
                        no_args_is_help=True)
    group.command("train")(handled(train))
    group.command("profile")(handled(profile))
    group.command("run")(handled(run))
    app.add_typer(group, name="detect")


def _sizes(text: str) -> tuple[int, ...]:
    from ..errors import ConfigError

    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ConfigError(f"--sizes takes input sizes separated by commas, e.g. 64,96,128; got {text!r}") from None
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"--sizes names a size twice ({text}); give each input size once, e.g. 64,96,128")
    if any(s > MAX_SIZE for s in sizes):
        raise ConfigError(f"--sizes must be at most {MAX_SIZE} px (a family member is one network at one input "
                          f"size), got {text}")
    return sizes


MAX_SIZE = 1024


def _seed(seed: int) -> int:
    from ..errors import ConfigError

    if seed < 0:
        raise ConfigError(f"--seed must be an integer >= 0, got {seed}")
    return seed


def train(
    out: Annotated[Path, typer.Option(help="The family folder to write (model.pt, one ONNX per size).")],
    frames: Annotated[int, typer.Option(help="Training frames (from the Fashion-MNIST training split).")] = 6000,
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Passes over the frames.")] = 3,
    sizes: Annotated[str, typer.Option(help="Input sizes of the family, multiples of 16.")] = "64,80,96,128",
    width: Annotated[int, typer.Option(help="TinyDet's base width (channels of its first stage).")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, one cycle).")] = 3e-3,
    segment_frames: Annotated[int, typer.Option(
        help="Frames per training segment: each segment draws new objects, so short segments show the detector "
             "more items, sizes and speeds for the same frames.")] = SEGMENT_FRAMES,
    seed: Annotated[int, typer.Option(help="Seed of the training stream and the initialisation.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing family folder.")] = False,
) -> None:
    """Train one TinyDet on frames of a synthetic stream (segments of every kind in turn, new objects in each) at
    every input size, and export it at each size (checked in ONNX Runtime).

    Example: [bold]edgeprune detect train --out runs/tinydet --frames 6000 -e 3[/]
    """
    from .. import runs
    from ..detection import stream as st
    from ..detection.detector import TrainConfig, save_family
    from ..detection.detector import train as fit

    cfg = TrainConfig(sizes=_sizes(sizes), epochs=epochs, lr=lr, width=width, seed=_seed(seed))
    from ..checks import number

    cfg.check(frames)
    number(segment_frames, "--segment-frames", at_least=1, integer=True)
    with runs.open_run(out, None, overwrite=overwrite, kind="detector family", option="--out") as folder:
        stream = st.make(st.training_segments(frames, segment_frames), seed=seed, pool="train")
        with progress_bars() as progress:
            model, seconds = fit(stream, cfg, lambda s, n, loss: progress.update("training", s, n,
                                                                                  f"loss {loss:.3f}"))
        # the stream as its arguments, not segment by segment (10,000 segments at 20,000 frames in pairs)
        described = {"synthetic": True, "frames": frames, "segment_frames": segment_frames, "seed": seed,
                     "pool": "train", "canvas": st.CANVAS, "kinds": sorted({s.name for s in stream.segments})}
        save_family(model, cfg.sizes, folder.path, {"training": {**vars(cfg), "frames": frames,
                                                                 "segment_frames": segment_frames,
                                                                 "seconds": seconds, "stream": described}})
    console.print(f"wrote {out}: TinyDet at {', '.join(map(str, cfg.sizes))} px, trained {seconds:.0f} s on "
                  f"{frames} synthetic frames")


def profile(
    family: Annotated[list[Path], typer.Argument(help="Family folders (`edgeprune detect train`) of one class set, "
                                                 "members named apart.")],
    out: Annotated[Path, typer.Option(help="The profile JSON to write.")],
    frames_per_segment: PerSegment = 200,
    seed: Seed = 1,
) -> None:
    """Measure ROMA's offline tables on a labelled synthetic stream (Fashion-MNIST test items, first half):
    AP per size bin, AP of k-frame-old detections per speed bin with the fitted β, and latency per detector.

    Example: [bold]edgeprune detect profile runs/tinydet --out roma.json[/]
    """
    from ..checks import number
    from ..detection import profile as prof
    from ..detection import stream as st
    from ..detection.detector import runners
    from ..runs import check_output_file

    check_output_file(out, "--out")
    _seed(seed)
    number(frames_per_segment, "--frames-per-segment", at_least=1, integer=True)
    detectors = runners(family)
    stream = st.make(st.scenario("calibration", frames_per_segment), seed=seed, pool="val")
    with progress_bars() as progress:
        p = prof.measure(detectors, stream, progress=lambda d, n: progress.update("profiling", d, n))
    prof.save(p, out)
    from rich.table import Table

    t = Table(title=f"ROMA profile {out} (synthetic stream; β per speed bin {[round(b, 3) for b in p.beta]})")
    for col in ("detector", "p50 ms", "AP@0.5", *(f"AP side {lo:g}-{hi:g}" for lo, hi in
                                                   zip(p.size_bins[:-1], p.size_bins[1:], strict=True))):
        t.add_column(col, justify="left" if col == "detector" else "right")
    for name, d in p.detectors.items():
        t.add_row(name, f"{d.p50_ms:.3f}", f"{d.ap50:.3f}", *(f"{a:.3f}" for a in d.ap_size))
    console.print(t)


def run(
    profile_path: Annotated[Path, typer.Argument(metavar="PROFILE", help="A profile (`edgeprune detect profile`).")],
    family: Annotated[Path, typer.Option(help="The family folder the profile was measured on.")],
    fps: Annotated[float, typer.Option(help="Frames per second of the stream.")],
    scenario: Annotated[str, typer.Option(help="mixed, calibration or one segment kind.")] = "mixed",
    frames_per_segment: PerSegment = 300,
    seed: Seed = 2,
    load_processes: Annotated[int, typer.Option(help="Busy processes during load-step segments.")] = 2,
    window: Annotated[int, typer.Option(help="Frames of the stream per ROMA/TOD decision.")] = 30,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the comparison here.")] = None,
) -> None:
    """Replay a synthetic stream (Fashion-MNIST test items, second half) at --fps with each fixed detector, TOD
    (tuned on an unloaded calibration stream), ROMA and the per-segment oracle; print real-time AP@0.5.

    Example: [bold]edgeprune detect run roma.json --family runs/tinydet --fps 600[/]
    """
    from ..checks import number
    from ..detection import profile as prof
    from ..detection import roma
    from ..detection import stream as st
    from ..detection.detector import runners
    from ..detection.realtime import trace
    from ..errors import ConfigError
    from ..files import write_json
    from ..runs import check_output_file

    check_output_file(json_out, "--json")
    _seed(seed)
    if not (isinstance(fps, float | int) and 0 < fps < float("inf")):
        raise ConfigError(f"--fps must be a positive number of frames per second, got {fps}")
    number(frames_per_segment, "--frames-per-segment", at_least=2, integer=True)
    number(load_processes, "--load-processes", at_least=0, at_most=64, integer=True,
           hint="busy processes beside the detectors; a few per core is load enough")
    number(window, "--window", at_least=1, integer=True)
    detectors = runners(family)
    p = prof.load(profile_path, detectors, warn=lambda m: console.print(f"warning: {m}", highlight=False))
    calib = st.make(st.scenario("calibration", frames_per_segment // 2), seed=seed + 1, pool="test")
    stream = st.make(st.scenario(scenario, frames_per_segment), seed=seed, pool="test")
    with progress_bars() as progress:
        calib_trace = trace(detectors, calib, 0, lambda d, n: progress.update("tracing calibration", d, n))
        main_trace = trace(detectors, stream, load_processes, lambda d, n: progress.update("tracing stream", d, n))
    tod = roma.tune_tod(calib, calib_trace, fps, [d.name for d in detectors], window=window)
    result = roma.compare(stream, main_trace, p, fps, tod, window)
    _table(result, f"real-time AP@0.5, synthetic stream {scenario!r}, {fps:g} fps")
    if json_out is not None:
        write_json(json_out, {"stream": stream.describe(), "load_processes": load_processes, **result})


def _table(result: dict, title: str) -> None:
    from rich.table import Table

    rows = result["rows"]
    segments = list(next(iter(rows.values()))["segments"])
    t = Table(title=title)
    for col in ("chooser", "all", *segments, "switches"):
        t.add_column(col, justify="left" if col == "chooser" else "right")
    for name, r in rows.items():
        t.add_row(name, f"{r['ap50']:.3f}", *(f"{r['segments'][s]:.3f}" for s in segments),
                  "" if r["switches"] is None else str(r["switches"]))
    console.print(t)
