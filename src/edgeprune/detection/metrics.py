"""Detections and their average precision at IoU 0.5, COCO's way (what torchmetrics' MeanAveragePrecision
computes with iou_thresholds=[0.5]; tests/test_detection.py holds them within 0.005 of each other), with
two restrictions torchmetrics does not offer and ROMA's tables need:

- `sides=(lo, hi)`: COCO's area-range rule on the box side sqrt(w·h) instead of fixed small/medium/large:
  ground truth outside the range is ignored, and so is an unmatched detection outside it;
- `ignore`: per-frame masks of ground truth to ignore (objects outside a speed bin); a detection matched to
  an ignored object counts neither way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RECALL_POINTS = np.linspace(0, 1, 101)


@dataclass(frozen=True)
class Detections:
    """One frame's detections: boxes (n, 4) xyxy in canvas px, scores (n,), classes (n,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


def sides(boxes: np.ndarray) -> np.ndarray:
    """sqrt(w·h) of xyxy boxes (x1 >= x0, y1 >= y0): the size ROMA's bins are on."""
    return np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def ap50(detections: Sequence[Detections], boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray],
         side_range: tuple[float, float] | None = None, ignore: Sequence[np.ndarray] | None = None,
         threshold: float = 0.5) -> float:
    """Mean over classes of COCO's 101-point AP at IoU `threshold`, of `detections[i]` against frame i's ground
    truth (`boxes[i]`, `classes[i]`); NaN when no ground truth counts. See the module docstring for
    `side_range` and `ignore`."""
    per_class: dict[int, list] = {}  # class -> [scores, true positive, counted, ground truth counted]
    for i, det in enumerate(detections):
        gt_ignored = np.zeros(len(classes[i]), bool) if ignore is None else np.asarray(ignore[i], bool).copy()
        det_out = np.zeros(len(det), bool)
        if side_range is not None:
            lo, hi = side_range
            s = sides(boxes[i])
            gt_ignored |= (s < lo) | (s >= hi)
            s = sides(det.boxes)
            det_out = (s < lo) | (s >= hi)
        for c in np.union1d(np.unique(classes[i]), np.unique(det.classes)):
            g = np.flatnonzero(classes[i] == c)
            d = np.flatnonzero(det.classes == c)
            d = d[np.argsort(-det.scores[d], kind="mergesort")][:100]
            g_ign = gt_ignored[g]
            order = np.argsort(g_ign, kind="mergesort")  # COCO matches counted ground truth first
            g, g_ign = g[order], g_ign[order]
            tp, counted = _match(iou(det.boxes[d], boxes[i][g]) if len(g) else np.zeros((len(d), 0)), g_ign,
                                 det_out[d], threshold)
            entry = per_class.setdefault(int(c), [[], [], [], 0])
            entry[0].append(det.scores[d])
            entry[1].append(tp)
            entry[2].append(counted)
            entry[3] += int((~g_ign).sum())
    aps = []
    for scores, tp, counted, n_gt in per_class.values():
        if n_gt == 0:
            continue
        scores, tp, counted = np.concatenate(scores), np.concatenate(tp), np.concatenate(counted)
        order = np.argsort(-scores, kind="mergesort")
        tp, counted = tp[order][counted[order]], counted[order][counted[order]]
        tps, fps = np.cumsum(tp), np.cumsum(~tp)
        recall = tps / n_gt
        precision = tps / np.maximum(tps + fps, np.finfo(float).eps)
        precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        q = np.zeros(len(RECALL_POINTS))
        ok = at < len(precision)
        q[ok] = precision[at[ok]]
        aps.append(q.mean())
    return float(np.mean(aps)) if aps else float("nan")


def _match(ious: np.ndarray, gt_ignored: np.ndarray, det_out: np.ndarray,
           threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching in one frame and class (detections by falling score): (true positive, counted)
    per detection. A detection takes the best unmatched counted object at IoU >= threshold, else the best
    unmatched ignored one (then it is not counted); an unmatched one outside the size range is not counted."""
    n_det = ious.shape[0]
    tp, counted, taken = np.zeros(n_det, bool), np.ones(n_det, bool), np.zeros(ious.shape[1], bool)
    for k in range(n_det):
        ok = ~taken & (ious[k] >= threshold)
        pick = ok & ~gt_ignored if (ok & ~gt_ignored).any() else ok
        if not pick.any():
            counted[k] = not det_out[k]
            continue
        idx = np.flatnonzero(pick)
        m = idx[len(idx) - 1 - np.argmax(ious[k, idx][::-1])]  # COCO keeps the last of equal IoUs
        taken[m] = True
        tp[k], counted[k] = not gt_ignored[m], not gt_ignored[m]
    return tp, counted
