"""The state HTTP and gRPC share: the sessions, the policy and its decision windows (the control loop), the
switch log, and inference with its timings.

Inference runs on a pool of `workers` threads (ONNX Runtime releases the GIL). Switches, loads, unloads and
policy changes run on a control thread of their own, so a switch never waits in the inference queue; a switch
the policy decides is handed to that thread too, and the request that closed the window is answered at once.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EdgePruneError
from ..portfolio import ROUTED, Manifest
from . import codec
from . import policy as policy_mod
from .codec import BadRequest, Decoded, Tensor
from .metrics import Metrics
from .sessions import Sessions

MAX_BODY_BYTES = 16 * 2**20
MAX_BATCH = 64
log = logging.getLogger("edgeprune.serve")


class Server:
    """What the endpoints share: sessions, policy, windows, logs and metrics."""

    def __init__(self, folder: str | Path, manifest: Manifest, sessions: Sessions, policy: policy_mod.Policy,
                 workers: int = 2, window_requests: int = 20, window_s: float = 0.5,
                 max_body_bytes: int = MAX_BODY_BYTES, on_decision: Callable[[dict], None] | None = None,
                 control_token: str | None = None):
        if workers < 1 or window_requests < 1 or not 0 < window_s < 1e6 or max_body_bytes < 1:
            raise ConfigError(f"need workers >= 1, window_requests >= 1, 0 < window_s < 1e6, max_body_bytes >= 1; "
                              f"got {workers}, {window_requests}, {window_s}, {max_body_bytes}")
        self.folder, self.manifest, self.sessions, self.policy = Path(folder), manifest, sessions, policy
        self.workers, self.window_requests, self.window_s = workers, window_requests, window_s
        self.max_body_bytes, self.on_decision, self.control_token = max_body_bytes, on_decision, control_token or None
        self.executor: ThreadPoolExecutor | None = None
        self.control: ThreadPoolExecutor | None = None
        self.ready = False
        self.decisions: collections.deque = collections.deque(maxlen=200)
        self.switches: collections.deque = collections.deque(maxlen=200)
        self._window: list[float] = []
        self._outputs: list = []  # kept only for a policy that reads them (policy.reads_outputs)
        self._window_start = time.perf_counter()
        self._window_lock = threading.Lock()
        self._recent: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=500))
        self.metrics = Metrics(self.model_ids(), manifest.ids, ROUTED, sessions.mode)
        self._show_active()

    def start(self) -> None:
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="edgeprune-infer")
        self.control = ThreadPoolExecutor(1, thread_name_prefix="edgeprune-control")
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        for pool in (self.executor, self.control):
            if pool is not None:
                pool.shutdown(wait=True)

    def _show_active(self) -> None:
        for v in self.manifest.variants:
            self.metrics.active.labels(v.id).set(1 if v.id == self.sessions.active else 0)

    # models -----------------------------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        return [ROUTED, *self.manifest.ids]

    def check_model(self, model: str, version: str | None = None) -> None:
        if model not in self.model_ids():
            raise BadRequest(404, f"unknown model {model!r}; this server holds {', '.join(self.model_ids())}")
        if version not in (None, "", "1"):
            raise BadRequest(404, f"model {model!r} has no version {version!r}; it has version 1 only")

    def is_ready(self, model: str) -> bool:
        return model == ROUTED or model in self.sessions.loaded()

    @property
    def task(self) -> codec.ClassifyCodec | codec.DetectCodec:
        """The codec of the portfolio's task: its outputs, their decoding and their form on the wire."""
        return codec.for_task(self.manifest.task)

    def output_specs(self) -> list[dict]:
        return self.task.output_specs(self.manifest)

    def metadata(self, model: str) -> dict:
        m = self.manifest
        params: dict[str, Any] = {"active_variant": self.sessions.active} if model == ROUTED else {
            k: v for k, v in asdict(m.variant(model)).items()
            if k in ("accuracy", "params", "bytes", "p50_ms", "p90_ms", "method", "sha256", "precision")}
        return {"name": model, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": m.input_name, "datatype": m.datatype, "shape": [-1, *m.input_shape]}],
                "outputs": self.output_specs(), "parameters": params}

    def config(self, model: str) -> dict:
        """Triton's model configuration (what `get_model_config` reads): the batch dimension is implied by
        max_batch_size and left out of dims."""
        m = self.manifest
        outputs = [{"name": o["name"], "data_type": f"TYPE_{o['datatype']}", "dims": self.task.config_dims(o)}
                   for o in self.output_specs()]
        return {"name": model, "platform": "onnxruntime_onnx", "backend": "onnxruntime", "version_policy":
                {"latest": {"num_versions": 1}}, "max_batch_size": MAX_BATCH,
                "input": [{"name": m.input_name, "data_type": f"TYPE_{m.datatype}", "format": "FORMAT_NONE",
                           "dims": list(m.input_shape)}], "output": outputs,
                "parameters": {"edgeprune_switch_mode": {"string_value": self.sessions.mode}}}

    # inference --------------------------------------------------------------------------------------------
    def input_array(self, decoded: Decoded) -> np.ndarray:
        """The one input of the portfolio's models, checked against the manifest."""
        m = self.manifest
        if len(decoded.inputs) != 1:
            raise BadRequest(400, f"expected 1 input named {m.input_name!r}, got {len(decoded.inputs)}")
        t = decoded.inputs[0]
        if t.name != m.input_name:
            raise BadRequest(400, f"input {t.name!r} is not an input of this model; send it as {m.input_name!r}")
        if t.datatype != m.datatype:
            raise BadRequest(400, f"input {t.name!r} has datatype {t.datatype!r}; expected {m.datatype!r}")
        want = m.input_shape
        if len(t.shape) != len(want) + 1 or list(t.shape[1:]) != want or not 1 <= t.shape[0] <= MAX_BATCH:
            raise BadRequest(400, f"input shape {list(t.shape)} does not fit: expected [N, {', '.join(map(str, want))}]"
                                  f" with 1 <= N <= {MAX_BATCH}")
        x = np.ascontiguousarray(t.array, dtype=np.float32)
        if not np.isfinite(x).all():
            raise BadRequest(400, "data holds NaN or infinity; send finite numbers")
        if decoded.outputs is not None:
            names = [o["name"] for o in self.output_specs()]
            odd = [o for o in decoded.outputs if o not in names]
            if odd:
                raise BadRequest(400, f"output {odd[0]!r} is not an output of this model; it has {', '.join(names)}")
        return x

    async def infer(self, model: str, decoded: Decoded, t_start: int, input_ns: int = 0) -> tuple[str, list[Tensor]]:
        """Check and run a decoded request on `model` in the inference pool: (the variant that computed it, its
        outputs). `t_start` (perf_counter_ns) is when the request arrived; times go to the model's statistics."""
        try:
            self.check_model(model)
            t0 = time.perf_counter_ns()
            x = self.input_array(decoded)
            t1 = time.perf_counter_ns()
            vid, y, t_run, t_done = await asyncio.get_running_loop().run_in_executor(self.executor, self._timed,
                                                                                     model, x)
            outputs = self.outputs(vid, y)
            if decoded.outputs is not None:
                outputs = [t for t in outputs if t.name in decoded.outputs]
        except EdgePruneError as e:
            self.metrics.failed(model, conflict_status(e), time.perf_counter_ns() - t_start)
            raise
        except BadRequest as e:
            self.metrics.failed(model, e.status, time.perf_counter_ns() - t_start)
            raise
        t2 = time.perf_counter_ns()
        self.metrics.answered(model, vid, x.shape[0], {"total": t2 - t_start, "queue": t_run - t1,
                                                       "compute_input": input_ns + t1 - t0,
                                                       "compute_infer": t_done - t_run, "compute_output": t2 - t_done})
        return vid, outputs

    def _timed(self, model: str, x: np.ndarray):
        t_run = time.perf_counter_ns()
        vid, y = self.run(model, x)
        return vid, y, t_run, time.perf_counter_ns()

    def run(self, model: str, x: np.ndarray) -> tuple[str, Any]:
        """Run `x` on `model` (a variant id, or the routed model) in this thread; record the timing and let
        the policy decide when a window is full. A variant without a session now is a NotLoaded (409).
        Returns the variant and its output: an array, or a detector's Detections per sample."""
        t0 = time.perf_counter()
        vid, y = self.sessions.infer(x, None if model == ROUTED else model)
        y = self.task.decode(self.manifest, vid, y)  # a caller waits for a detector's decoding, as profiled
        ms = (time.perf_counter() - t0) * 1e3
        self.metrics.latency.labels(vid).observe(ms / 1e3)
        self._recent[vid].append(ms)
        if model == ROUTED:
            self._observe(vid, ms, y)
        return vid, y

    def outputs(self, vid: str, y: Any) -> list[Tensor]:
        """The protocol's outputs of `y`, what `run` returned for variant `vid`."""
        found = self.task.detections(y)
        if found is not None:
            self.metrics.detections.labels(vid).inc(found)
        return self.task.outputs(y)

    # the control loop -------------------------------------------------------------------------------------
    def _observe(self, vid: str, ms: float, y: Any) -> None:
        with self._window_lock:
            if vid != self.sessions.active:
                return  # a request begun before a switch says nothing about the new variant
            self._window.append(ms)
            if self.policy.reads_outputs:
                self._outputs.append(y)
            seconds = time.perf_counter() - self._window_start
            if len(self._window) < self.window_requests and seconds < self.window_s:
                return
            window = policy_mod.Window(vid, self._window, seconds, self._outputs)
            self._window, self._outputs, self._window_start = [], [], time.perf_counter()
            policy = self.policy
            try:
                decision = policy.decide(window)
            except Exception as e:  # noqa: BLE001  a policy's failure must not fail the request that closed it
                log.error("policy %s failed to decide (%s: %s); the active variant stays", policy.name,
                          type(e).__name__, e)
                return
            self._log(decision)
        if decision.want != decision.active and self.control is not None:
            self.control.submit(self._policy_switch, decision.want, f"policy {decision.policy}: {decision.reason}")

    def _policy_switch(self, vid: str, why: str) -> None:
        try:
            self.switch(vid, why)
        except EdgePruneError as e:
            self.metrics.switch_failures.labels(self.sessions.mode).inc()
            log.error("switch to %s failed: %s", vid, e)

    def _log(self, decision: policy_mod.Decision) -> None:
        entry = asdict(decision)
        self.decisions.append(entry)
        if self.on_decision is not None:
            self.on_decision(entry)

    def switch(self, vid: str, why: str) -> float:
        before = self.sessions.active
        seconds = self.sessions.switch(vid)
        if before != vid:
            mode = self.sessions.mode
            self.switches.append({"time": time.time(), "from": before, "to": vid, "seconds": seconds, "why": why})
            self.metrics.switches.labels(mode).inc()
            self.metrics.switch_s.labels(mode).observe(seconds)
            with self._window_lock:
                self._window, self._outputs, self._window_start = [], [], time.perf_counter()
            self._show_active()
        return seconds

    def set_policy(self, name: str, params: dict) -> dict:
        new = policy_mod.make(self.manifest, name, **params)
        switched = None
        if isinstance(new, policy_mod.Fixed) and new.variant is not None:
            switched = self.switch(new.variant, "PUT /v2/portfolio/policy")
        self.policy = new
        return {**self.policy_state(), "switch_seconds": switched}

    async def on_control(self, fn: Callable, *args):
        """Run a switch, load, unload or policy change on the control thread (never in the inference queue)."""
        return await asyncio.get_running_loop().run_in_executor(self.control, fn, *args)

    def authorized(self, authorization: str | None) -> bool:
        if self.control_token is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.control_token.encode())

    def policy_state(self) -> dict:
        last = self.decisions[-1] if self.decisions else None
        return {"name": self.policy.name, "params": self.policy.params(), "active": self.sessions.active,
                "switch_mode": self.sessions.mode, "budget_met": last["budget_met"] if last else True,
                "decisions": list(self.decisions)[-50:], "switches": list(self.switches)[-50:]}

    def live_latency(self) -> dict:
        return {vid: {"p50_ms": float(np.percentile(d, 50)), "p99_ms": float(np.percentile(d, 99)), "n": len(d)}
                for vid, d in list(self._recent.items()) if d}


def conflict_status(e: EdgePruneError) -> int:
    """The HTTP status of an EdgePruneError raised by a request: 409 for a state conflict, 400 otherwise."""
    from .sessions import SwitchConflict

    return 409 if isinstance(e, SwitchConflict) else 400
