"""The run record: what a run folder says about itself, typed, and read and written here alone.

`config.json` is a `RunConfig` (everything needed to repeat the run); `report.json` a `RunReport` (what the
run measured; written last, so its presence marks a finished run). Both keep their flat JSON form on disk,
so runs of earlier versions still read; every field is type-checked when read, because people edit these
files by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import __version__, files, measure, runs, threads
from .checks import check_types
from .errors import CheckpointError, ConfigError
from .measure import Profile
from .train import TrainConfig


@dataclass
class MeasureOptions:
    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = (1,)
    runs: int = 30
    warmup: int = 5
    runtimes: tuple[str, ...] = measure.RUNTIMES
    memory: bool = True

    def __post_init__(self) -> None:
        self.batch_sizes, self.threads, self.runtimes = map(tuple, (self.batch_sizes, self.threads, self.runtimes))


# How a run was executed, not what it is: a run resumed, or a sweep cell re-run, is the same run without them.
EXECUTION_FIELDS = ("edgeprune_version", "threads", "threads_used")


@dataclass
class RunConfig:
    """Everything needed to repeat a run."""

    command: str
    model: str
    data: dict  # keyword arguments of edgeprune.data.loaders
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    model_kwargs: dict = field(default_factory=dict)
    num_classes: int | None = None  # None: taken from the data set
    in_channels: int | None = None
    method: dict = field(default_factory=dict)  # the pruning method's options (later commands)
    device: str = "cpu"
    # CPU threads of the run's heavy steps: "auto" (threads.py: the CPUs free now) or a count; the count it
    # resolved to is recorded, and a resumed run keeps it (another count gives other floating-point sums)
    threads: str | int = "auto"
    threads_used: int | None = None
    edgeprune_version: str = __version__

    def __post_init__(self) -> None:
        threads.check(self.threads)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> RunConfig:
        """A RunConfig from its saved form, every field's type checked (a hand-edited config.json is common)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where} holds {type(d).__name__}, not an object of run options")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        d = dict(d)
        for key, kind in (("train", TrainConfig), ("measure", MeasureOptions)):
            sub = d.get(key, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{where}: {key!r} must be an object of options, got {sub!r}")
            extra = sorted(set(sub) - set(kind.__dataclass_fields__))
            if extra:
                raise ConfigError(f"{where}: {key!r} has unknown key {extra[0]!r} (allowed: "
                                  f"{', '.join(sorted(kind.__dataclass_fields__))}); remove it or fix its spelling")
            check_types(kind, sub, f"{where}: {key}")
            d[key] = kind(**sub)
        check_types(cls, d, where)
        return cls(**d)


def read_config(path: str | Path) -> RunConfig:
    """The RunConfig saved at `path` (a config.json)."""
    return RunConfig.from_dict(files.read_json(path), where=str(path))


def write_config(path: str | Path, cfg: RunConfig) -> Path:
    return files.write_json(path, cfg.to_dict())


@dataclass
class Level:
    """One level of an IMP run, as its report lists it."""

    level: int
    density: float
    profile: Profile


@dataclass
class RunReport:
    """report.json of a finished run. `details` holds what only one method reports (per-layer tables,
    Reconvene's groups, a shrink's output difference, ...), kept at the top level of the JSON."""

    run: str
    data: str
    profile: Profile | None = None  # None only for a whole IMP run: its levels hold the profiles
    synthetic_data: bool = False
    data_copy: str | None = None  # the data set was read from a copy, not the official files ("JPEG q75 copy")
    data_sha256: str | None = None  # of the files the data was decoded from, where the loader checks them
    method: str | None = None  # None: dense training
    options: dict = field(default_factory=dict)
    train: dict | None = None  # {"epochs": [per-epoch records], "seconds": float}
    prune_seconds: float | None = None
    level: int | None = None  # an IMP level's own report
    density: float | None = None
    levels: list[Level] = field(default_factory=list)  # a whole IMP run
    budget: dict | None = None  # the target, the sparsity found and the probes of a budget search
    source: str | None = None  # the run a shrink (DNNShifter) started from
    vs_source: dict | None = None
    details: dict = field(default_factory=dict)

    @property
    def last_profile(self) -> Profile:
        """The run's profile (for IMP, its last level's)."""
        if self.profile is not None:
            return self.profile
        if self.levels:
            return self.levels[-1].profile
        raise CheckpointError(f"the report of run {self.run!r} holds no measured profile")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"}
        d["profile"] = None if self.profile is None else self.profile.to_dict()
        d["levels"] = [{"level": lv.level, "density": lv.density, "profile": lv.profile.to_dict()}
                       for lv in self.levels]
        return {**{k: v for k, v in d.items() if v is not None and v != []}, **self.details}

    @classmethod
    def from_dict(cls, d: Any, where: str = "report") -> RunReport:
        if not isinstance(d, dict) or not (isinstance(d.get("profile"), dict) or d.get("levels")):
            raise CheckpointError(f"{where} holds no measured profile (it is empty or was not written by "
                                  "edgeprune); repeat the run with `edgeprune rerun RUN --name NEW`")
        own = {f.name for f in fields(cls)} - {"details", "profile", "levels"}
        values = {k: v for k, v in d.items() if k in own}
        check_types(cls, values, where)
        try:
            return cls(**values, profile=Profile.from_dict(d["profile"]) if d.get("profile") else None,
                       levels=[Level(lv["level"], lv["density"], Profile.from_dict(lv["profile"]))
                               for lv in d.get("levels") or []],
                       details={k: v for k, v in d.items() if k not in own | {"profile", "levels"}})
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: the profile is incomplete ({type(e).__name__}: {e}); repeat the "
                                  "run with `edgeprune rerun RUN --name NEW`") from None


def read_report(path: str | Path) -> RunReport:
    """The RunReport at `path` (a report.json, or the run folder holding it)."""
    path = Path(path)
    path = path / runs.REPORT if path.is_dir() else path
    return RunReport.from_dict(files.read_json(path), where=str(path))


def write_report(path: str | Path, report: RunReport) -> Path:
    return files.write_json(path, report.to_dict())
