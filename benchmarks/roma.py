"""ROMA, label-free run-time choice among detectors, on a SYNTHETIC video stream: against each fixed detector,
TOD (median-size thresholds) and a per-segment oracle that reads labels (issue 16).

    nice -n 5 python benchmarks/roma.py          # -> results/roma.{md,json}

A mechanism check, not a MOT result: no YOLO weights and no MOT data offline. The detectors are one TinyDet
(CenterNet-style, edgeprune.models.tinydet) trained briefly on CPU on synthetic frames (Fashion-MNIST training
items on a 128 px canvas), exported at input sizes 64, 80, 96 and 128. ROMA's tables are profiled on a labelled
stream of test items (first half); TOD's thresholds are tuned on an unloaded calibration stream, and the
comparison runs on a third stream (test items, second half): six segments (small/slow, small/fast,
large/slow, large/fast, mixed, and a load step with busy processes on the 2 cores). Trace-driven: every
detector runs on every frame with ONNX Runtime (1 thread), round-robin, latencies measured (graph + decoding);
each chooser is replayed on that trace at F frames/s (edgeprune.detection.realtime). Frame rates are scaled to
this CPU: F is given as frames per call of the largest detector at its profiled latency.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import HERE, measured, write_results

from edgeprune.detection import profile as prof
from edgeprune.detection import roma
from edgeprune.detection import stream as st
from edgeprune.detection.detector import TrainConfig, runners, save_family, train
from edgeprune.detection.realtime import Fixed, replay, score, trace
from edgeprune.measure import environment

FAMILY = HERE / "runs" / "roma" / "family"
PROFILE = HERE / "runs" / "roma" / "profile.json"


def family(frames: int, epochs: int, width: int, segment_frames: int, folder: Path = FAMILY) -> dict:
    """Train the family into `folder` (reused while it exists with the same training, e.g. one that
    `edgeprune detect train --out FOLDER --frames F -e E --width W --segment-frames S` made); what the training
    was."""
    import json

    asked = {"frames": frames, "epochs": epochs, "width": width, "segment_frames": segment_frames}
    record = folder / "family.json"
    if record.is_file():
        training = json.loads(record.read_text())["training"]
        if {k: training.get(k) for k in asked} == asked:
            return training
    cfg = TrainConfig(epochs=epochs, width=width)
    stream = st.make(st.training_segments(frames, segment_frames), seed=0, pool="train")
    model, seconds = train(stream, cfg)
    save_family(model, cfg.sizes, folder, {"training": {**vars(cfg), **asked, "seconds": seconds}})
    return json.loads(record.read_text())["training"]


def torchmetrics_ap50(stream: st.Stream, dets) -> float:
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    m = MeanAveragePrecision(iou_thresholds=[0.5], backend="faster_coco_eval")
    m.update([dict(boxes=torch.from_numpy(d.boxes), scores=torch.from_numpy(d.scores),
                   labels=torch.from_numpy(d.classes)) for d in dets],
             [dict(boxes=torch.from_numpy(b), labels=torch.from_numpy(c))
              for b, c in zip(stream.boxes, stream.classes, strict=True)])
    return float(m.compute()["map_50"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-frames", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--width", type=int, default=16, help="TinyDet's base width")
    ap.add_argument("--segment-frames", type=int, default=st.SEGMENT_FRAMES,
                    help="frames per training segment (each draws new objects)")
    ap.add_argument("--family", type=Path, default=FAMILY, help="the family folder: trained there unless it holds "
                    "a family of this training")
    ap.add_argument("--per-segment", type=int, default=300)
    ap.add_argument("--profile-per-segment", type=int, default=200)
    ap.add_argument("--calibration-per-segment", type=int, default=150)
    ap.add_argument("--frames-per-call", type=float, nargs="+", default=[1.5, 2.5, 4.0],
                    help="frame rate as frames per call of the largest detector (profiled p50)")
    ap.add_argument("--load-processes", type=int, default=2)
    ap.add_argument("--window", type=int, default=30)
    args = ap.parse_args()
    started = time.time()
    training = family(args.train_frames, args.epochs, args.width, args.segment_frames, args.family)
    detectors = runners(args.family)
    profile_stream = st.make(st.scenario("calibration", args.profile_per_segment), seed=1, pool="val")
    profile = prof.measure(detectors, profile_stream)
    prof.save(profile, PROFILE)
    calib = st.make(st.scenario("calibration", args.calibration_per_segment), seed=3, pool="test")
    stream = st.make(st.scenario("mixed", args.per_segment), seed=2, pool="test")
    calib_trace = trace(detectors, calib, 0)
    main_trace = trace(detectors, stream, args.load_processes)
    largest, cheapest = detectors[0].name, detectors[-1].name
    rows = []
    for fpc in args.frames_per_call:
        fps = fpc * 1000 / profile.detectors[largest].p50_ms
        tod = roma.tune_tod(calib, calib_trace, fps, [d.name for d in detectors], window=args.window)
        result = roma.compare(stream, main_trace, profile, fps, tod, args.window)
        fixed_replay = replay(main_trace, fps, Fixed(largest))
        check = {"ours": score(stream, fixed_replay.detections(main_trace)),
                 "torchmetrics": torchmetrics_ap50(stream, fixed_replay.detections(main_trace))}
        rows.append({"frames_per_call": fpc, "check": check, **result})
    loaded = stream.frames_of("load-step")
    unloaded = np.setdiff1d(np.arange(len(stream)), loaded)
    latency = {n: {"p50_ms": float(np.median(main_trace.latency_ms[n][unloaded])),
                   "p50_ms_load_step": float(np.median(main_trace.latency_ms[n][loaded]))}
               for n in main_trace.detectors}
    payload = {"environment": environment(), "synthetic": True, "training": training,
               "profile": profile.to_dict(), "stream": stream.describe(), "calibration": calib.describe(),
               "load_processes": args.load_processes, "window": args.window, "latency": latency,
               "largest": largest, "cheapest": cheapest, "rows": rows, "wall_s": time.time() - started}
    write_results("roma", report(payload), payload)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report(p: dict) -> list[str]:
    env, tr, prof_ = p["environment"], p["training"], p["profile"]
    names = list(prof_["detectors"])
    lines = [
        "# ROMA: label-free run-time choice among detectors, on a SYNTHETIC stream",
        "",
        f"{measured('roma.py', env, 'torch', 'onnxruntime')}, a shared machine. **Synthetic data**: Fashion-MNIST "
        f"items moving on a {st.CANVAS} px canvas; a mechanism check of ROMA, not a MOT17/MOT20 result. "
        f"Detectors: one TinyDet (width {tr['width']}) trained on CPU for {tr['epochs']} epochs over "
        f"{tr['frames']} synthetic frames in segments of {tr.get('segment_frames', 20)} (each segment new "
        f"objects; {tr['seconds'] / 60:.1f} min), exported at input sizes "
        f"{', '.join(n[1:] for n in names)}. ROMA and TOD decide every {p['window']} frames; real-time "
        f"AP@0.5 (COCO, 101 points) of every frame, each scored with the newest finished detection, per segment "
        f"and their mean (the headline; pooling all frames into one ranking penalises any mix of detectors, "
        f"whose scores are calibrated differently, so the per-segment oracle can fall below a fixed detector "
        f"there). "
        f"Load step: {p['load_processes']} busy processes beside the detectors.",
        "",
        "## Profile (labelled stream, test items 0-4999, unloaded)",
        "",
        "| detector | p50 ms | p50 ms in the stream | p50 ms at the load step | AP@0.5 | "
        + " | ".join(f"AP side {lo:g}-{hi:g} px" for lo, hi in zip(prof_["size_bins"][:-1], prof_["size_bins"][1:],
                                                                  strict=True)) + " |",
        "|---|---|---|---|---|" + "---|" * (len(prof_["size_bins"]) - 1),
    ]
    for n, d in prof_["detectors"].items():
        lat = p["latency"][n]
        lines.append(f"| {n} | {d['p50_ms']:.3f} | {lat['p50_ms']:.3f} | {lat['p50_ms_load_step']:.3f} | "
                     f"{d['ap50']:.3f} | " + " | ".join(f"{a:.3f}" for a in d["ap_size"]) + " |")
    top = prof_["detectors"][p["largest"]]["ap50"]
    lines += ["", f"AP@0.5 of the largest detector ({p['largest']}) on the profile stream: **{top:.3f}** (target "
              f"≥ 0.3, so that the comparison means something: {'met' if top >= 0.3 else 'missed'})."]
    lines += ["", "Degradation factor β per speed bin (px/frame), fitted to AP of k-frame-old detections: "
              + ", ".join(f"{lo:g}-{hi:g}: {b:.3f}" for lo, hi, b in zip(prof_["speed_bins"][:-1],
                                                                         prof_["speed_bins"][1:], prof_["beta"],
                                                                         strict=True)) + ".", ""]
    for r in p["rows"]:
        rows = r["rows"]
        segs = list(rows["roma"]["segments"])
        fixed = {k: v for k, v in rows.items() if k.startswith("fixed ")}
        best = max(fixed, key=lambda k: fixed[k]["ap50"])
        ro, orc, tod = rows["roma"], rows["oracle"], rows["tod"]
        load_seg = next(s for s in segs if s.endswith("load-step"))
        overhead = ro["selector_us_per_call"] / (1000 * prof_["detectors"][p["cheapest"]]["p50_ms"])
        lines += [f"## {r['fps']:.0f} fps ({r['frames_per_call']:g} frames per call of {p['largest']})", "",
                  "| chooser | mean of segments | all frames pooled | " + " | ".join(s.split(":", 1)[1] for s in segs)
                  + " | switches |",
                  "|---|---|---|" + "---|" * len(segs) + "---|"]
        for name, v in rows.items():
            lines.append(f"| {name} | **{pct(v['ap50'])}** | {pct(v['pooled_ap50'])} | "
                         + " | ".join(pct(v["segments"][s]) for s in segs)
                         + f" | {'' if v['switches'] is None else v['switches']} |")
        gain = ro["ap50"] / fixed[best]["ap50"] - 1
        lines += ["", f"- ROMA {pct(ro['ap50'])} against the best fixed ({best}) {pct(fixed[best]['ap50'])}: "
                  f"**{100 * gain:+.1f} %** relative (target ≥ +4 %: {'met' if gain >= 0.04 else 'missed'}).",
                  f"- ROMA / oracle: **{pct(ro['ap50'] / orc['ap50'])} %** (target ≥ 85 %: "
                  f"{'met' if ro['ap50'] >= 0.85 * orc['ap50'] else 'missed'}); the oracle per segment: "
                  + ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in r["oracle_choice"].items()) + ".",
                  f"- Load step: ROMA {pct(ro['segments'][load_seg])} against TOD {pct(tod['segments'][load_seg])} "
                  f"(target ≥ TOD: {'met' if ro['segments'][load_seg] >= tod['segments'][load_seg] else 'missed'}); "
                  f"TOD's thresholds (median side, px) {r['tod_thresholds']}.",
                  f"- Selector overhead: {ro['selector_us_per_call']:.1f} µs per detection = "
                  f"**{100 * overhead:.2f} %** of the cheapest detector's p50 (target ≤ 1 %: "
                  f"{'met' if overhead <= 0.01 else 'missed'}).",
                  f"- Our AP against torchmetrics (fixed {p['largest']}): {r['check']['ours']:.4f} vs "
                  f"{r['check']['torchmetrics']:.4f}.", ""]
    lines.append(f"Whole run {p['wall_s'] / 60:.1f} min.")
    return lines


if __name__ == "__main__":
    main()
