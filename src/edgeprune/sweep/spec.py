"""A sweep spec: read, checked, and expanded into its cells (models × methods with their options × sparsities ×
seeds, a dense baseline, INT8 copies), each an ordinary run config with a stable folder name. The spec's format is
in the package docstring."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .. import jobs, kinds, models
from ..errors import ConfigError, unknown_name
from ..methods import registry
from ..train import TrainConfig, check_device

QUANTIZE_KEYS = ("mode", "calibration", "per_channel")
_BARE = ("criterion", "conversion")  # option values that name themselves in a cell name; sparsity comes last



def list_methods() -> list[str]:
    """Method names a sweep accepts: every registered method (methods.registry), and the run kinds a sweep may name
    (kinds/: NeuroFlux's training under a memory budget)."""
    return sorted([*registry.list_methods(), *kinds.names(in_sweeps=True)])


def _kind(name: str) -> str | None:
    """The pruning method's kind (None for a run kind of its own)."""
    return None if name in kinds.names(in_sweeps=True) else registry.get(name).kind


@dataclass
class Resources:
    """What each cell asks Ray for; a cell's torch uses `cpus` threads."""

    cpus: float = 1
    gpus: float = 0

    def __post_init__(self) -> None:
        for what, value, least in (("cpus", self.cpus, 0), ("gpus", self.gpus, -1)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= least:
                raise ConfigError(f"resources.{what} must be a number {'> 0' if least == 0 else '>= 0'}, "
                                  f"got {value!r}")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


@dataclass
class SweepSpec:
    """A parsed and validated sweep spec (see the module docstring); building it checks every cell."""

    name: str
    data: dict  # keyword arguments of edgeprune.data.loaders
    models: list  # names, or {name, data, train} that override the spec's data and train for that model
    methods: list[dict] = field(default_factory=list)  # {name: ..., sparsities: [...], **options}
    train: dict = field(default_factory=dict)  # TrainConfig fields but seed (see seeds)
    measure: dict = field(default_factory=dict)  # MeasureOptions fields
    seeds: list[int] = field(default_factory=lambda: [0])
    dense: bool = True  # a dense baseline cell per model and seed
    out: str | None = None  # None: runs/sweeps/<name>
    device: str = "cpu"
    resources: Resources = field(default_factory=Resources)
    quantize: dict | str | None = None  # "int8", or {mode, calibration, per_channel} of `edgeprune quantize`

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ConfigError(f"name must be a folder name (letters, digits, . _ -), got {self.name!r}")
        if not isinstance(self.data, dict) or "name" not in self.data:
            raise ConfigError(f"data must be a mapping with the data set's name (e.g. {{name: fashion-mnist, "
                              f"subset: 1000}}), got {self.data!r}")
        if not isinstance(self.models, list) or not self.models:
            raise ConfigError(f"models must be a non-empty list of model names, got {self.models!r}")
        if not isinstance(self.methods, list) or not (self.methods or self.dense):
            raise ConfigError("methods must be a list of {name: ..., sparsities: [...]} (or set dense: true)")
        if not _list_of(self.seeds, int):
            raise ConfigError(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
        if isinstance(self.train, dict) and "seed" in self.train:
            raise ConfigError("train.seed: give the seeds as `seeds: [0, 1, ...]` instead")
        if not isinstance(self.dense, bool):
            raise ConfigError(f"dense must be true or false, got {self.dense!r}")
        if isinstance(self.resources, dict):
            self.resources = _build(Resources, self.resources, "resources")
        if self.quantize is not None and self.quantize != "int8" and not isinstance(self.quantize, dict):
            raise ConfigError(f"quantize must be int8 or a mapping of {', '.join(QUANTIZE_KEYS)}, "
                              f"got {self.quantize!r}")
        cells(self)  # every cell's options are checked here, before anything runs

    @property
    def folder(self) -> Path:
        return Path(self.out) if self.out else Path("runs", "sweeps", self.name)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SweepSpec:
        if not isinstance(d, dict):
            raise ConfigError(f"a sweep spec is a mapping of {', '.join(cls.__dataclass_fields__)}; got {d!r}")
        _check_keys(d, cls.__dataclass_fields__, "the spec")
        missing = [k for k in ("name", "data", "models") if k not in d]
        if missing:
            raise ConfigError(f"the spec lacks {', '.join(missing)} (required: name, data, models)")
        return cls(**d)


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its folder name under the sweep folder and its config."""

    name: str
    cfg: jobs.RunConfig


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a YAML sweep spec; a bad key, method or option raises ConfigError naming it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep spec {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep spec {path} is not valid YAML: {e}") from None
    try:
        return SweepSpec.from_dict(raw)
    except ConfigError as e:
        raise type(e)(f"sweep spec {path}: {e}") from None


def cells(spec: SweepSpec, folder: Path | None = None) -> list[Cell]:
    """Every (model × method with options × sparsity × seed) run of the spec, named stably. A method that
    starts from a trained run (kind "trained") starts from the dense cell of its model and seed in `folder`
    (default: the spec's)."""
    measure = _build(jobs.MeasureOptions, spec.measure, "measure")
    variants = [("dense", {})] if spec.dense else []
    for i, entry in enumerate(spec.methods):
        variants += _expand(entry, f"methods[{i}]")
        if _kind(entry["name"]) == "trained" and not spec.dense:
            raise ConfigError(f"methods[{i}] ({entry['name']}) starts from a trained run: set dense: true, so that "
                              "every model and seed has the dense cell it starts from")
    folder = Path(folder or spec.folder)

    def source(model: str, seed: int, method: dict) -> dict:
        if method and _kind(method["name"]) == "trained":
            return {**method, "source": str(folder / _folder_name(f"{model}-dense-seed{seed}"))}
        return dict(method)

    out = [
        Cell(_folder_name(f"{model}-{label}-seed{seed}"), jobs.RunConfig(
            command=kinds.of_method(method), model=model, data=data, train=TrainConfig(**train, seed=seed),
            measure=dataclasses.replace(measure), method=source(model, seed, method), device=device))
        for model, data, train, device in _models(spec) for seed in spec.seeds for label, method in variants
    ]
    if spec.quantize is not None:
        q = {} if spec.quantize == "int8" else spec.quantize
        _check_keys(q, QUANTIZE_KEYS, "quantize")
        int8 = kinds.get("quantize").config  # the spec's `quantize` key: an INT8 copy of each cell
        out += [Cell(f"{c.name}-int8", int8(folder / c.name, **q, base=c.cfg)) for c in out
                if not (c.cfg.method and _kind(c.cfg.method["name"]) == "levels")]
    twice = [name for name, n in Counter(c.name for c in out).items() if n > 1]
    if twice:
        raise ConfigError(f"cells {', '.join(twice)} appear more than once; remove the repeated method entries")
    return out


def _models(spec: SweepSpec) -> list[tuple[str, dict, dict, str]]:
    """(model, data, train, device) of every models entry: a name, or {name, data, train, device} over the spec's
    own."""
    known, out = models.list_models(), []
    for i, entry in enumerate(spec.models):
        where = f"models[{i}]"
        entry = {"name": entry} if isinstance(entry, str) else entry
        _check_keys(entry, ("name", "data", "train", "device"), where)
        name = entry.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where} must be a model name or {{name: ..., data: {{...}}, train: {{...}}, "
                              f"device: ...}}; got {entry!r}")
        device = entry.get("device", spec.device)
        check_device(device, f"{where}.device" if "device" in entry else "device")
        if ":" not in name and name not in known:  # a package.module:function factory is imported when run
            raise unknown_name("model", name, known, f"in {where}")
        models.require_task(name, "classify", f"a sweep ({where})")
        data, train = ({**base, **_mapping(entry.get(k, {}), f"{where}.{k}")}
                       for k, base in (("data", spec.data), ("train", spec.train)))
        if "seed" in train:
            raise ConfigError(f"{where}.train.seed: give the seeds as `seeds: [0, 1, ...]` instead")
        _build(TrainConfig, train, f"{where}.train" if "train" in entry else "train")
        out.append((name, data, train, device))
    return out


def _expand(entry: dict, where: str) -> list[tuple[str, dict]]:
    """(label, method config) for every combination of the listed options of one method entry."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{where} must be a mapping with a name, e.g. {{name: synflow, sparsities: [0.9]}}; "
                          f"got {entry!r}")
    name = entry["name"]
    if name not in list_methods():
        raise ConfigError(f"{where}: unknown method {name!r}; allowed: {', '.join(list_methods())}")
    kind = kinds.find(name)
    if kind is not None and kind.in_sweeps:  # a run kind of its own (NeuroFlux's), its options the entry's keys
        fields, check = {f.name: f for f in dataclasses.fields(kind.options)}, kind.make_options
    else:
        fields, check = registry.get(name).option_fields(), registry.options_of
    opts = {k: v for k, v in entry.items() if k != "name"}
    _check_keys(opts, [*fields, *(["sparsities"] if "sparsity" in fields else [])], f"{where} ({name}) option")
    if "sparsities" in opts:
        if "sparsity" in opts:
            raise ConfigError(f"{where} ({name}): give sparsity or sparsities, not both")
        opts["sparsity"] = opts.pop("sparsities")
    order = ([k for k in _BARE if k in opts] + sorted(k for k in opts if k not in (*_BARE, "sparsity"))
             + ["sparsity"] * ("sparsity" in opts))
    axes = []
    for k in order:
        grid = isinstance(opts[k], list) and not str(fields[k].type).startswith("list")
        if grid and not opts[k]:
            raise ConfigError(f"{where} ({name}): {k} is an empty list")
        axes.append(opts[k] if grid else [opts[k]])
    out = []
    for values in itertools.product(*axes):
        method = {"name": name, **dict(zip(order, values, strict=True))}
        try:
            check(method)
        except ConfigError as e:
            raise type(e)(f"{where} ({name}): {e}") from None
        parts = [_text(v) if k in _BARE or k == "sparsity" else f"{k}={_text(v)}"
                 for k, v in zip(order, values, strict=True)]
        out.append(("-".join([name, *parts]), method))
    return out


# Small helpers.

def _build(cls, values: dict, where: str):
    _check_keys(values, cls.__dataclass_fields__, where)
    return cls(**values)


def _mapping(values, where: str) -> dict:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {values!r}")
    return values


def _check_keys(values: dict, allowed: Iterable[str], where: str) -> None:
    _mapping(values, where)
    allowed = list(allowed)
    unknown = [k for k in values if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(allowed)}")


def _list_of(values, kind: type) -> bool:
    return (isinstance(values, list) and bool(values) and len(set(values)) == len(values)
            and all(isinstance(v, kind) and not isinstance(v, bool) for v in values))


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)

