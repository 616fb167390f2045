"""The variants a server holds and the one it answers with, in three switch modes compared side by side:

- `preloaded` (DNNShifter): every variant has its own ONNX Runtime session from the start; a switch
  replaces one reference.
- `reload`: only the active variant has a session; a switch creates the new one from its ONNX file (as an
  explicit model load in Triton does) and then replaces the reference.
- `masks` (the sparse-model approach): one dense-shaped PyTorch model; every variant is held as a
  dense-shaped state (its weights in the corner of the dense tensors, zeros elsewhere: a masked dense
  model), and a switch writes the chosen one's weights into the serving model.

The swap is atomic: `infer` reads one (variant id, runner) tuple, so a request keeps the runner it started
with even if a switch lands meanwhile; a replaced ONNX session lives until its last request ends. In `masks`
mode there is only one model to write into: a switch waits for the request running on it (that wait is part
of that approach's cost), and a request reports the variant whose weights it ran with.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ConfigError
from ..ort import ort_session
from ..portfolio import Manifest, PortfolioError

SWITCH_MODES = ("preloaded", "reload", "masks")


def _fixed(vid: str) -> str:
    return f'{{"name": "fixed", "params": {{"variant": "{vid}"}}}}'


class SwitchConflict(PortfolioError):
    """A switch or unload the server's state forbids now (the variant is unloaded, or is the active one)."""


class NotLoaded(SwitchConflict):
    """A request names a variant that has no session in this switch mode now."""


class Runner(Protocol):
    def run(self, x: np.ndarray) -> np.ndarray: ...


class OrtRunner:
    def __init__(self, path: Path, threads: int):
        self.session = ort_session(path, threads)
        self.input = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


class MaskedModel:
    """One dense-shaped PyTorch model and every variant as a dense-shaped state for it (masks mode)."""

    def __init__(self, folder: Path, manifest: Manifest, threads: int):
        import torch

        from ..export import load_model

        onnx_only = [v.id for v in manifest.variants if v.model_file is None]
        if onnx_only:
            raise PortfolioError(f"variant {onnx_only[0]} is {manifest.variant(onnx_only[0]).precision.upper()}, an "
                                 "ONNX file without a PyTorch model, and the masks mode switches PyTorch weights; "
                                 "use --switch preloaded or reload, or build the portfolio from fp32 runs only")
        self.torch, self.lock = torch, threading.Lock()
        self.active: str | None = None  # whose weights the model holds
        torch.set_num_threads(threads)
        models = {v.id: load_model(folder / v.model_file).eval() for v in manifest.variants}
        dense_id = max(manifest.variants, key=lambda v: v.params).id
        self.model = models[dense_id]
        shapes = {k: t.shape for k, t in self.model.state_dict().items()}
        self.states = {vid: self._dense_shaped(vid, m.state_dict(), shapes, dense_id) for vid, m in models.items()}
        del models
        x = np.random.default_rng(0).standard_normal((2, *manifest.input_shape), dtype=np.float32)
        for v in manifest.variants:  # held dense-shaped, each variant must still compute what it computes
            self.activate(v.id)
            want = OrtRunner(folder / v.onnx, 1).run(x)
            got = self.run(x)
            if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
                raise PortfolioError(f"variant {v.id}: held in the shape of {dense_id}, its output differs from "
                                     f"{v.onnx} by {float(np.abs(got - want).max()):.3g}; the masks mode needs "
                                     "variants whose layers are narrowed copies of the densest one's")

    def _dense_shaped(self, vid: str, state: dict, shapes: dict, dense_id: str) -> dict:
        torch = self.torch
        if state.keys() != shapes.keys():
            odd = sorted(state.keys() ^ shapes.keys())[:3]
            raise PortfolioError(f"variant {vid} has other layers than {dense_id} ({', '.join(odd)}); the masks "
                                 "mode holds variants of one architecture only")
        out = {}
        for k, t in state.items():
            if t.dim() != len(shapes[k]) or any(a > b for a, b in zip(t.shape, shapes[k], strict=True)):
                raise PortfolioError(f"variant {vid}: {k} has shape {list(t.shape)}, larger than {dense_id}'s "
                                     f"{list(shapes[k])}; the masks mode needs the densest variant to contain all")
            full = torch.zeros(shapes[k], dtype=t.dtype)
            full[tuple(slice(0, n) for n in t.shape)] = t
            out[k] = full
        return out

    def activate(self, vid: str) -> None:
        with self.lock, self.torch.no_grad():
            for k, t in self.model.state_dict().items():
                t.copy_(self.states[vid][k])
            self.active = vid

    def infer(self, x: np.ndarray, vid: str | None = None) -> tuple[str, np.ndarray]:
        """(the variant whose weights ran, the output): read under the lock a switch takes."""
        with self.lock, self.torch.inference_mode():
            if vid is not None and vid != self.active:
                raise NotLoaded(f"model {vid!r} is not loaded in switch mode 'masks' (only the active variant is); "
                                "ask the routed model 'portfolio'")
            return self.active, self.model(self.torch.from_numpy(x)).numpy()

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.infer(x)[1]


def _signature(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class Sessions:
    """The runners of a portfolio in one switch mode, the active variant, and Triton-style load/unload."""

    def __init__(self, folder: str | Path, manifest: Manifest, mode: str = "preloaded", threads: int = 1,
                 active: str | None = None, warmup: int = 5):
        if mode not in SWITCH_MODES:
            raise ConfigError(f"unknown switch mode {mode!r}; choose from {', '.join(SWITCH_MODES)}")
        if mode == "masks" and manifest.task == "detect":
            raise ConfigError("the masks mode switches the PyTorch weights of one classifier; a detector portfolio's "
                              "members are one network at several input sizes: use --switch preloaded or reload")
        self.folder, self.manifest, self.mode, self.threads, self.warmup = Path(folder), manifest, mode, threads, warmup
        first = manifest.variant(active).id if active else max(manifest.variants, key=lambda v: v.accuracy).id
        self._lock = threading.Lock()  # one switch or load at a time; requests never take it
        # each file as verified at start: reload mode reads files again at switch time and refuses changed ones
        self._files = {v.id: _signature(self.folder / v.onnx) for v in manifest.variants}
        self._loaded: dict[str, Runner] = {}
        self._masked = MaskedModel(self.folder, manifest, threads) if mode == "masks" else None
        if mode == "preloaded":
            for v in manifest.variants:
                self._loaded[v.id] = self._warm(self._ort(v.id))
        self._current: tuple[str, Runner] = (first, self._runner_for(first))

    def _ort(self, vid: str) -> OrtRunner:
        path = self.folder / self.manifest.variant(vid).onnx
        restart = "restart `edgeprune serve` to serve the portfolio as it is now"
        if _signature(path) != self._files[vid]:
            raise SwitchConflict(f"variant {vid}: {path} changed on disk since the server started (the portfolio was "
                                 f"rebuilt or edited); {restart}")
        try:
            return OrtRunner(path, self.threads)
        except Exception as e:  # noqa: BLE001  ONNX Runtime raises its own exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise SwitchConflict(f"variant {vid}: {path} cannot be loaded ({first}); {restart}") from None

    def _warm(self, runner: Runner) -> Runner:
        x = np.zeros((self.manifest.batch_size, *self.manifest.input_shape), dtype=np.float32)
        for _ in range(self.warmup):
            runner.run(x)
        return runner

    def _runner_for(self, vid: str) -> Runner:
        if self._masked is not None:
            self._masked.activate(vid)
            return self._masked
        if vid in self._loaded:
            return self._loaded[vid]
        return self._ort(vid)  # reload mode: a fresh session from the file, as an explicit model load

    def current(self) -> tuple[str, Runner]:
        """The active variant and its runner: one read, so a switch cannot split them."""
        return self._current

    def infer(self, x: np.ndarray, vid: str | None = None) -> tuple[str, np.ndarray]:
        """Run `x` on variant `vid` (None: the active one); returns the variant that computed the output."""
        if self._masked is not None:
            return self._masked.infer(x, vid)
        if vid is None:
            vid, runner = self._current
        else:
            runner = self.runner(vid)
            if runner is None:
                how = (f"load it (POST /v2/repository/models/{vid}/load)" if self.mode == "preloaded" else
                       f"make it the active one (PUT /v2/portfolio/policy {_fixed(vid)})")
                raise NotLoaded(f"model {vid!r} is not loaded in switch mode {self.mode!r}; {how} or ask the routed "
                                "model 'portfolio'")
        return vid, runner.run(x)

    @property
    def active(self) -> str:
        return self._current[0]

    def switch(self, vid: str) -> float:
        """Make `vid` the active variant; the seconds it took (0 when it already was)."""
        self.manifest.variant(vid)
        with self._lock:
            if vid == self._current[0]:
                return 0.0
            if self.mode == "preloaded" and vid not in self._loaded:
                raise SwitchConflict(f"variant {vid} is unloaded; load it first "
                                     f"(POST /v2/repository/models/{vid}/load)")
            t0 = time.perf_counter()
            self._current = (vid, self._runner_for(vid))
            return time.perf_counter() - t0

    def runner(self, vid: str) -> Runner | None:
        """The runner of variant `vid` when it is loaded (preloaded mode), the active one's otherwise."""
        if vid == self._current[0]:
            return self._current[1]
        return self._loaded.get(vid)

    def loaded(self) -> list[str]:
        return sorted({*self._loaded, self._current[0]})

    def load(self, vid: str) -> None:
        """Triton's explicit load: in preloaded mode, (re)create the variant's session. The other modes hold only
        the active variant and load at switch time: loading it is nothing to do, loading another is a conflict
        that says how to make it active (never a success that loaded nothing)."""
        self.manifest.variant(vid)
        if self.mode != "preloaded":
            if vid != self.active:
                raise SwitchConflict(f"switch mode {self.mode!r} holds only the active variant ({self.active}); "
                                     f"make {vid} active instead (PUT /v2/portfolio/policy {_fixed(vid)}), or serve "
                                     "with --switch-mode preloaded to load variants side by side")
            return
        with self._lock:
            if vid not in self._loaded:
                self._loaded[vid] = self._warm(self._ort(vid))

    def unload(self, vid: str) -> None:
        self.manifest.variant(vid)
        with self._lock:
            if vid == self._current[0]:
                raise SwitchConflict(f"variant {vid} is the active one and cannot be unloaded; switch to another "
                                     "first (PUT /v2/portfolio/policy)")
            self._loaded.pop(vid, None)
