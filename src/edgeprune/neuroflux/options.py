"""NeuroFlux's options, free of torch so that the command line can build its flags from them: the planner's
(`Options`) and the run's (`Settings`: the budget, the exit rule, the validation split, the cache). Each field's
help text is the text of its --flag (`cli/common.options_of`), so the flags and the options cannot drift apart."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError

LR_SCALINGS = ("sqrt", "linear", "none")
CACHE_DTYPE_NAMES = ("float32", "float16")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str | int, what: str = "--memory-budget") -> int:
    """'96MiB', '1.5GiB', '200MB', '4096' (bytes) -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m and m.group(2).lower()
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"{what} {text!r} is not a positive size; write e.g. 96MiB, 1.5GiB or 200MB")
    return int(float(m.group(1)) * _UNITS[unit])


def _opt(default: Any, help: str, required: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "required": required})


@dataclass
class Options:
    """The planner's choices (reconstructed; see plan.py)."""

    min_batch: int = _opt(8, "Smallest batch a block may train with.")
    max_batch: int = _opt(512, "Largest batch a block may train with.")
    aux_min_width: int = _opt(8, "Fewest filters of an auxiliary head (early layers, large maps).")
    aux_max_width: int = _opt(64, "Most filters of an auxiliary head (late layers).")
    aux_pool: int = _opt(2, "An auxiliary head pools its map to this many × this many.")
    aux_hidden: int = _opt(128, "Hidden units of an auxiliary head's MLP.")
    homogeneity: float = _opt(0.5, "A layer joins the block before it while the block's batch stays at least this "
                                   "fraction of what it was.")
    lr_scaling: str = _opt("sqrt", "How a block's learning rate follows its batch (from --lr at --batch-size): "
                                   "sqrt, linear or none.")
    headroom: float = _opt(0.1, "Share of the budget kept free for the accountant's error (it predicts within "
                                "about ±15 % on CPU).")

    def __post_init__(self) -> None:
        for name in ("min_batch", "max_batch", "aux_min_width", "aux_max_width", "aux_pool",
                     "aux_hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.min_batch < 2:
            raise ConfigError(f"min-batch {self.min_batch}: batch norm needs at least 2 samples per batch")
        if self.max_batch < self.min_batch:
            raise ConfigError(f"max-batch {self.max_batch} is below min-batch {self.min_batch}; raise it")
        if self.aux_max_width < self.aux_min_width:
            raise ConfigError(f"aux-max-width {self.aux_max_width} is below aux-min-width {self.aux_min_width}")
        if not 0 < self.homogeneity <= 1:
            raise ConfigError(f"homogeneity must be in (0, 1], got {self.homogeneity}")
        if not 0 <= self.headroom < 1:
            raise ConfigError(f"headroom must be in [0, 1) (a share of the budget kept free), got {self.headroom}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ConfigError(f"lr-scaling {self.lr_scaling!r}: choose from {', '.join(LR_SCALINGS)}")


@dataclass
class Settings(Options):
    """NeuroFlux's options: the planner's, and the budget, the exit rule, the validation split and the cache."""

    memory_budget: str | None = _opt(
        None, "Training memory budget, e.g. 96MiB, 1.5GiB or 200MB: every block (its layers, auxiliary heads, "
        "optimiser state and one batch's activations) is planned to fit it. It bounds what training adds to the "
        "process's resident set, not the process's total (Python, torch and the data set come on top): "
        "report.json records both.", required=True)
    exit_tolerance: float = _opt(1.0, "Choose the earliest exit within this many accuracy points of the best exit "
                                      "(on the validation split).")
    val_size: int = _opt(1000, "Validation samples carved from the training split, on which the exit is chosen.")
    cache_dtype: str = _opt("float32", "float32 or float16 (half the disk) for the cached block outputs.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory_budget is None:
            raise ConfigError("NeuroFlux needs a memory budget: pass --memory-budget, e.g. 96MiB")
        parse_bytes(self.memory_budget)
        if not self.exit_tolerance >= 0:
            raise ConfigError(f"exit-tolerance must be >= 0 points, got {self.exit_tolerance}")
        if isinstance(self.val_size, bool) or not isinstance(self.val_size, int) or self.val_size < 1:
            raise ConfigError(f"val-size must be a positive number of samples, got {self.val_size!r}")
        if self.cache_dtype not in CACHE_DTYPE_NAMES:
            raise ConfigError(f"cache-dtype {self.cache_dtype!r}: choose from {', '.join(CACHE_DTYPE_NAMES)}")

    @property
    def budget(self) -> int:
        return parse_bytes(self.memory_budget)

    def to_dict(self) -> dict:
        return asdict(self)
