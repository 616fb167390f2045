"""What the server counts: Prometheus metrics (every series present from the start, at 0) and per-model inference
statistics in Triton's form (`GET /v2/models/{m}/stats`, gRPC `ModelStatistics`: what tritonclient's
`get_inference_statistics` reads)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

# the status codes the server answers with, each series present from the start
CODES = ("200", "400", "401", "404", "405", "409", "413", "500", "503")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, n: int = 1) -> None:
        self.count += n
        self.ns += ns


@dataclass
class ModelStats:
    """Triton's `InferStatistics` of one model: successes and failures with their request time, and of the
    successes the time queued for an inference thread, decoding the inputs, inferring and encoding the outputs."""

    inference_count: int = 0  # samples (batch dimension summed)
    execution_count: int = 0  # runs of the model
    last_inference: int = 0  # ms since the epoch
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def as_triton(self, name: str) -> dict:
        durations = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
        stats = {k: {"count": getattr(self, k).count, "ns": getattr(self, k).ns} for k in durations}
        return {"name": name, "version": "1", "last_inference": self.last_inference,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {**stats, "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
                "batch_stats": [], "memory_usage": []}


class Metrics:
    def __init__(self, models: list[str], variants: list[str], routed: str, mode: str):
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter("edgeprune_requests", "Inference requests answered", ["model", "variant", "code"],
                                registry=r)
        self.responses = Counter("edgeprune_http_responses", "HTTP responses by status code (every route)",
                                 ["code"], registry=r)
        self.grpc = Counter("edgeprune_grpc_responses", "gRPC calls by status code", ["code"], registry=r)
        self.latency = Histogram("edgeprune_inference_seconds", "Inference time per request (thread pool)",
                                 ["variant"], registry=r,
                                 buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.active = Gauge("edgeprune_active_variant", "1 for the variant the routed model answers with",
                            ["variant"], registry=r)
        self.switches = Counter("edgeprune_switches", "Switches of the active variant", ["mode"], registry=r)
        self.switch_failures = Counter("edgeprune_switch_failures", "Switches that could not be made", ["mode"],
                                       registry=r)
        self.switch_s = Histogram("edgeprune_switch_seconds", "Time a switch took in the server", ["mode"],
                                  registry=r, buckets=(1e-5, 1e-4, .001, .01, .05, .1, .5, 1, 5))
        self.detections = Counter("edgeprune_detections", "Detections answered (detector portfolios)", ["variant"],
                                  registry=r)
        for v in variants:
            self.requests.labels(routed, v, "200")
            self.requests.labels(v, v, "200")
            self.latency.labels(v)
            self.detections.labels(v)
        for m in models:
            for code in ("400", "404", "409", "413", "500"):
                self.requests.labels(m, "", code)
        for code in CODES:
            self.responses.labels(code)
        for code in ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "UNAUTHENTICATED", "INTERNAL",
                     "UNIMPLEMENTED"):
            self.grpc.labels(code)
        self.switches.labels(mode)
        self.switch_failures.labels(mode)
        self.switch_s.labels(mode)
        self.started = time.time()
        self._lock = threading.Lock()
        self.stats = {m: ModelStats() for m in models}
        self.totals = {"requests": 0, "errors_4xx": 0, "errors_5xx": 0}
        self.by_variant = dict.fromkeys(variants, 0)

    def response(self, code: int) -> None:
        """An HTTP response of any route."""
        self.responses.labels(str(code)).inc()
        with self._lock:
            if 400 <= code < 500:
                self.totals["errors_4xx"] += 1
            elif code >= 500:
                self.totals["errors_5xx"] += 1

    def grpc_call(self, code: str, failed_with: int | None = None) -> None:
        self.grpc.labels(code).inc()
        if failed_with is not None:
            self.response_totals(failed_with)

    def response_totals(self, code: int) -> None:
        with self._lock:
            self.totals["errors_4xx" if code < 500 else "errors_5xx"] += 1

    def answered(self, model: str, vid: str, samples: int, ns: dict[str, int]) -> None:
        """An inference request answered: `ns` has the request's total, queue, input, infer and output times."""
        self.requests.labels(model, vid, "200").inc()
        with self._lock:
            s = self.stats[model]
            s.inference_count += samples
            s.execution_count += 1
            s.last_inference = int(time.time() * 1000)
            s.success.add(ns["total"])
            for k in ("queue", "compute_input", "compute_infer", "compute_output"):
                getattr(s, k).add(ns[k])
            self.totals["requests"] += 1
            self.by_variant[vid] = self.by_variant.get(vid, 0) + 1

    def failed(self, model: str, code: int, ns: int) -> None:
        if model not in self.stats:  # labels only for the models held: a client cannot grow the series
            return
        self.requests.labels(model, "", str(code)).inc()
        with self._lock:
            self.stats[model].fail.add(ns)

    def triton_stats(self, models: list[str]) -> dict:
        with self._lock:
            return {"model_stats": [self.stats[m].as_triton(m) for m in models]}

    def summary(self) -> dict:
        with self._lock:
            return {**self.totals, "by_variant": dict(self.by_variant), "started": self.started}
