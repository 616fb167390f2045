"""A portfolio (DNNShifter, papers.md §2): variants of one model, made by edgeprune runs, gathered into one
folder that a server loads and switches between at run time.

`build` reads finished runs (dense, Reconvene, shrunk IMP levels, sweeps: anything `edgeprune report`
reads), checks that they answer the same question (one data set, one input shape, one set of classes),
re-times every variant's ONNX model in one interleaved pass at the serving settings, keeps the Pareto front
of accuracy against p50 latency (all variants with keep_all), and writes `portfolio.json` beside a copy of
each variant's model.onnx (what is served) and model.pt (what the `masks` switch mode serves). A variant may be
held in both precisions: an INT8 run (`edgeprune quantize`) joins as a variant of its own, ONNX only (it has no
PyTorch model, so the `masks` mode cannot serve it), chosen by the accuracy measured on its INT8 artifact.

A portfolio of detectors (ROMA, papers.md §7) is built from detector families (`edgeprune detect train`) and
their ROMA profile (`edgeprune detect profile`): every member of the families is a variant (none is dropped:
ROMA may choose any), with the profile's AP@0.5 as its accuracy and its p50/p90 (graph + decoding, as the
server times a detector); the profile itself is recorded in the manifest, for the `roma` policy.

`load` reads a portfolio back and verifies it before anything is served: every file present, its sha256 as
recorded, every ONNX model taking the recorded input shape and giving the recorded classes. This module
imports neither torch nor the measurement code at module level: a server that loads a portfolio needs
only ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError, EdgePruneError
from .formats import PORTFOLIO_FORMAT, PORTFOLIO_MANIFEST

MANIFEST = PORTFOLIO_MANIFEST
FORMAT = PORTFOLIO_FORMAT
ROUTED = "portfolio"  # the id the server answers for the routed model; no variant may take it


class PortfolioError(EdgePruneError):
    """A portfolio (or a run meant for one) is missing, corrupt or inconsistent."""


@dataclass
class Variant:
    """One model of a portfolio, as the manifest records it. Latencies are from the portfolio's own
    interleaved pass, at its batch size and thread count."""

    id: str
    source: str  # the run folder it came from (an IMP level: <run>/level_NN)
    method: str
    onnx: str  # file name inside the portfolio folder
    sha256: str
    model_file: str | None  # the model.pt copy (state_dict + spec), for the masks switch mode; None for INT8
    model_sha256: str | None
    accuracy: float
    params: int
    nonzero_params: int
    macs: int
    bytes: int  # of the ONNX file
    p50_ms: float
    p90_ms: float
    precision: str = "fp32"  # of the ONNX file: "fp32" or "int8" (manifests before INT8 variants hold fp32 only)


@dataclass
class Manifest:
    data: str
    input_name: str
    input_shape: list[int]  # one sample: (C, H, W)
    datatype: str  # KServe v2 name of the input's element type
    classes: int
    batch_size: int  # the serving settings the latencies were measured at
    threads: int
    variants: list[Variant]  # fastest first
    dropped: list[dict] = field(default_factory=list)  # {"id", "source", "accuracy", "p50_ms", "why"}
    timing: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    task: str = "classify"  # or "detect": variants are detectors, answered with decoded detections
    detection: dict | None = None  # detect: {"canvas", "class_ids", "input_sizes": {id: px}, "profile"}
    format: str = FORMAT

    def variant(self, vid: str) -> Variant:
        for v in self.variants:
            if v.id == vid:
                return v
        raise PortfolioError(f"unknown variant {vid!r}; the portfolio holds {', '.join(self.ids)}")

    @property
    def ids(self) -> list[str]:
        return [v.id for v in self.variants]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Manifest:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PortfolioError(f"{where} is not an edgeprune portfolio manifest (format {FORMAT}); "
                                 "build one with `edgeprune portfolio build RUN... --out DIR`")
        from .checks import check_types

        try:
            if not isinstance(d["variants"], list) or not all(isinstance(v, dict) for v in d["variants"]):
                raise ConfigError(f"{where}: 'variants' is not a list of variants")
            check_types(cls, {k: v for k, v in d.items() if k != "variants"}, where)
            for v in d["variants"]:
                check_types(Variant, v, f"{where}: variant {v.get('id')!r}")
            return cls(**{**d, "variants": [Variant(**v) for v in d["variants"]]})
        except ConfigError as e:
            raise PortfolioError(f"{e}; build the portfolio again") from None
        except (KeyError, TypeError) as e:
            raise PortfolioError(f"{where} is incomplete ({type(e).__name__}: {e}); build the portfolio "
                                 "again") from None


# ONNX Runtime's tensor element types by their KServe v2 datatype names.
ORT_TO_V2 = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
             "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int8)": "INT8", "tensor(uint8)": "UINT8"}


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def onnx_signature(path: str | Path, detector: bool = False) -> tuple[str, list[int], str, int]:
    """(input name, one sample's input shape, KServe datatype, classes) of an ONNX classifier (a detector: its
    output channels less the box channels), read by ONNX Runtime; a file it cannot read is a PortfolioError
    naming the file."""
    from .ort import ort_session

    try:
        sess = ort_session(Path(path))
    except Exception as e:  # ONNX Runtime raises its own exception types for every kind of bad file
        raise PortfolioError(f"{path} is not a readable ONNX model ({str(e).splitlines()[0][:200]}); "
                             "export it again (`edgeprune export RUN --onnx FILE`)") from None
    (inp,), out = sess.get_inputs(), sess.get_outputs()[0]
    shape = [int(s) if isinstance(s, int) else -1 for s in inp.shape[1:]]
    if detector:
        from .formats import BOX_CHANNELS

        classes = out.shape[1] - BOX_CHANNELS if len(out.shape) == 4 and isinstance(out.shape[1], int) else -1
    else:
        classes = out.shape[-1] if isinstance(out.shape[-1], int) else -1
    return inp.name, shape, ORT_TO_V2.get(inp.type, inp.type), classes


def variant_id(run_name: str) -> str:
    """A URL-safe id from a run's name ("imp-run/level_03" -> "imp-run.level_03")."""
    vid = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name.replace("/", ".")).strip("-.") or "variant"
    return f"{vid}-run" if vid == ROUTED else vid


def build(paths: Sequence[str | Path], out: str | Path, *, keep_all: bool = False, batch_size: int = 1,
          threads: int = 1, rounds: int = 6, runs: int = 10, overwrite: bool = False,
          progress: Callable[[int, int], None] | None = None, profile: str | Path | None = None,
          warn: Callable[[str], None] | None = None) -> Manifest:
    """Gather the finished runs under `paths` into the portfolio folder `out` (see the module docstring).
    `rounds`×`runs` timed calls per variant; `progress(done, total)` after each round. Detector families
    instead of runs: see `build_detectors` (`profile` and `warn` are its arguments)."""
    from . import runs as runs_mod
    from .checks import number

    for option, value in (("--batch-size", batch_size), ("--threads", threads), ("--rounds", rounds),
                          ("--runs", runs)):
        number(value, option, at_least=1, integer=True)
    out = Path(out)
    _not_a_source(paths, out)
    with runs_mod.open_run(out, None, overwrite=overwrite, kind="portfolio", option="--out") as folder:
        return _build(paths, folder.path, keep_all=keep_all, batch_size=batch_size, threads=threads, rounds=rounds,
                      runs=runs, progress=progress, profile=profile, warn=warn)


def _not_a_source(paths: Sequence[str | Path], out: Path) -> None:
    """Refuse an --out that is, or holds, one of the runs read: replacing it would lose them."""
    target = out.resolve()
    for p in paths:
        src = Path(p).resolve()
        if src == target or target in src.parents or src in target.parents:
            raise ConfigError(f"--out {str(out)!r} is or holds or lies inside the source {str(p)!r}: a portfolio "
                              "is written to a folder of its own; choose another --out")


def _build(paths: Sequence[str | Path], out: Path, *, keep_all: bool, batch_size: int, threads: int, rounds: int,
           runs: int, progress: Callable[[int, int], None] | None, profile: str | Path | None,
           warn: Callable[[str], None] | None) -> Manifest:
    """`build` into the folder `out`, already locked and checked free (runs.open_run)."""
    from . import files as files_mod
    from . import runs as runs_mod
    from .detection.detector import FAMILY
    from .measure import environment
    from .report.collect import find
    from .report.plots import pareto_front
    from .timing import latency_onnx_interleaved

    families = [Path(p) for p in paths if (Path(p) / FAMILY).is_file()]
    if families:
        others = [str(p) for p in paths if not (Path(p) / FAMILY).is_file()]
        if others:
            raise PortfolioError(f"{families[0]} is a detector family but {others[0]} is not: a portfolio serves "
                                 "detectors or classifiers, not both; build one portfolio of each")
        return build_detectors(families, profile, out, warn=warn)
    if profile is not None:
        raise ConfigError(f"--profile {profile} is a ROMA profile of detectors, but {paths[0]} is not a detector "
                          "family (no family.json); leave --profile out for classifier runs")
    rows, _ = find(paths)
    if len(rows) < 1:
        raise PortfolioError(f"no finished runs in {', '.join(map(str, paths))}")
    signatures = {}
    for r in rows:
        onnx = r.path / runs_mod.ONNX
        if not onnx.is_file() or (r.profile.precision == "fp32" and not (r.path / runs_mod.MODEL).is_file()):
            raise PortfolioError(f"run {r.path} has no {runs_mod.ONNX} or {runs_mod.MODEL}; export it first "
                                 f"(`edgeprune export {r.path} --onnx {onnx}`)")
        if r.synthetic or r.accuracy is None:
            raise PortfolioError(f"run {r.path} has no measured accuracy (trained on {r.data!r}); a portfolio "
                                 "chooses by accuracy: train the runs on a real data set")
        signatures[r.name] = onnx_signature(onnx)
    first = rows[0]
    for r in rows[1:]:
        for what, a, b in (("data set", first.data, r.data),
                           ("input shape", signatures[first.name][1], signatures[r.name][1]),
                           ("input datatype", signatures[first.name][2], signatures[r.name][2]),
                           ("classes", signatures[first.name][3], signatures[r.name][3])):
            if a != b:
                raise PortfolioError(f"run {r.path} has {what} {b}, but {first.path} has {a}: a portfolio holds "
                                     "variants of one model on one data set; build it from those runs only")
    ids = [variant_id(r.name) for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PortfolioError(f"runs named alike give the same variant id {dup[0]!r}; pass each run once or "
                             "rename one")
    timed = latency_onnx_interleaved({vid: (r.path / runs_mod.ONNX, tuple(signatures[r.name][1]))
                                      for vid, r in zip(ids, rows, strict=True)},
                                     batch_size, threads, rounds, runs, progress=progress)
    keep = set(range(len(rows))) if keep_all else set(
        pareto_front([(timed[vid].p50_ms, r.accuracy) for vid, r in zip(ids, rows, strict=True)]))
    variants, dropped = [], []
    for i, (vid, r) in enumerate(zip(ids, rows, strict=True)):
        lat = timed[vid]
        if i not in keep:
            by = next(ids[j] for j in sorted(keep, key=lambda j: timed[ids[j]].p50_ms)
                      if timed[ids[j]].p50_ms <= lat.p50_ms and rows[j].accuracy >= r.accuracy)
            dropped.append({"id": vid, "source": str(r.path), "accuracy": r.accuracy, "p50_ms": lat.p50_ms,
                            "why": f"Pareto-dominated by {by}: as accurate or more, and faster"})
            continue
        onnx = out / f"{vid}.onnx"
        shutil.copyfile(r.path / runs_mod.ONNX, onnx)
        pt = None
        if r.profile.precision == "fp32":  # an INT8 run ships its ONNX file only
            pt = out / f"{vid}.pt"
            shutil.copyfile(r.path / runs_mod.MODEL, pt)
        variants.append(Variant(
            id=vid, source=str(r.path), method=r.method, onnx=onnx.name, sha256=sha256(onnx),
            model_file=pt.name if pt else None, model_sha256=sha256(pt) if pt else None, accuracy=r.accuracy,
            params=r.profile.params, nonzero_params=r.profile.nonzero_params, macs=r.profile.macs,
            bytes=onnx.stat().st_size, p50_ms=lat.p50_ms, p90_ms=lat.p90_ms, precision=r.profile.precision))
    name, shape, dtype, classes = signatures[first.name]
    manifest = Manifest(
        data=first.data, input_name=name, input_shape=shape, datatype=dtype, classes=classes, batch_size=batch_size,
        threads=threads, variants=sorted(variants, key=lambda v: v.p50_ms), dropped=dropped,
        timing={"rounds": rounds, "runs": runs, "interleaved": True}, environment=environment())
    files_mod.write_json(out / MANIFEST, manifest.to_dict())
    return manifest


def build_detectors(families: Sequence[Path], profile: str | Path | None, out: Path,
                    warn: Callable[[str], None] | None = None) -> Manifest:
    """The portfolio in `out` (locked and checked free by the caller) of every member of the detector `families`
    (one class set, members named apart), with the ROMA `profile` measured on exactly those detectors (from
    another machine: rescaled by a ratio measured now, `warn` told; see detection.profile.load)."""
    from . import files as files_mod
    from . import runs as runs_mod
    from .detection import profile as prof
    from .detection.detector import runners
    from .detection.stream import CANVAS
    from .export import load_model
    from .measure import count_macs, count_params, environment

    if profile is None:
        raise PortfolioError(f"a portfolio of detectors needs their ROMA profile: pass --profile PATH, measured with "
                             f"`edgeprune detect profile {' '.join(map(str, families))} --out PATH`")
    detectors = runners(families)
    p = prof.load(profile, detectors, warn=warn)
    models = {f: load_model(f / runs_mod.MODEL) for f in families}  # one network per family, at every size
    variants = []
    for d in detectors:
        onnx = out / f"{d.name}.onnx"
        shutil.copyfile(d.onnx, onnx)
        model = models[d.onnx.parent]
        model.input_size = d.input_size
        params, nonzero = count_params(model)
        dp = p.detectors[d.name]
        variants.append(Variant(
            id=d.name, source=str(d.onnx.parent), method=model.edgeprune_spec.name, onnx=onnx.name,
            sha256=sha256(onnx), model_file=None, model_sha256=None, accuracy=dp.ap50, params=params,
            nonzero_params=nonzero, macs=count_macs(model, (1, CANVAS, CANVAS))[0], bytes=onnx.stat().st_size,
            p50_ms=dp.p50_ms, p90_ms=dp.p90_ms))
    name, shape, dtype, classes = onnx_signature(out / variants[0].onnx, detector=True)
    manifest = Manifest(
        data="synthetic detection stream", input_name=name, input_shape=shape, datatype=dtype, classes=classes,
        batch_size=1, threads=1, variants=sorted(variants, key=lambda v: v.p50_ms),
        timing={"source": str(profile), "what": "ROMA profile: ONNX Runtime graph + decoding, 1 thread, per frame "
                "of its labelled stream", "rescaled": p.rescaled},
        environment=environment(), task="detect",
        detection={"canvas": CANVAS, "class_ids": p.classes, "input_sizes": {d.name: d.input_size for d in detectors},
                   "profile": p.to_dict()})
    files_mod.write_json(out / MANIFEST, manifest.to_dict())
    return manifest


def load(folder: str | Path) -> Manifest:
    """The manifest of the portfolio in `folder`, verified: every file present with its recorded sha256, and
    every ONNX model taking the recorded input and giving the recorded classes. The first file that fails
    is named in a PortfolioError."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise PortfolioError(f"{folder} holds no {MANIFEST}; build a portfolio with "
                             "`edgeprune portfolio build RUN... --out DIR`")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as e:
        raise PortfolioError(f"{path} is not valid JSON ({e}); build the portfolio again") from None
    if not manifest.variants:
        raise PortfolioError(f"{path} lists no variants; build the portfolio again")
    for v in manifest.variants:
        for file, digest in ((v.onnx, v.sha256), (v.model_file, v.model_sha256)):
            if file is None:  # an INT8 variant has no PyTorch model
                continue
            f = folder / file
            if not f.is_file():
                raise PortfolioError(f"variant {v.id}: {f} is missing; build the portfolio again")
            if sha256(f) != digest:
                raise PortfolioError(f"variant {v.id}: {f} does not match its sha256 in {MANIFEST} (corrupt or "
                                     "replaced); build the portfolio again")
        name, shape, dtype, classes = onnx_signature(folder / v.onnx, detector=manifest.task == "detect")
        expected = (manifest.input_name, manifest.input_shape, manifest.datatype, manifest.classes)
        if (name, shape, dtype, classes) != expected:
            raise PortfolioError(f"variant {v.id}: {folder / v.onnx} takes input {name!r} {dtype} {shape} with "
                                 f"{classes} classes, but the portfolio serves {expected[0]!r} {expected[2]} "
                                 f"{expected[1]} with {expected[3]} classes; build the portfolio again")
    return manifest
