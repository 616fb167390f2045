"""A run-making kind declared outside edgeprune, as a user's own would be: importing this module registers it.

Kind "untrained": the model as initialised from the run's seed, every weight scaled, then saved, exported and
measured without training (the epoch-0 baseline of a study). A sweep may name it; reports label it by its scale.
"""

from dataclasses import asdict, dataclass

import torch

from edgeprune import kinds, lifecycle, runs
from edgeprune.errors import ConfigError
from edgeprune.record import write_report


@dataclass
class UntrainedOptions:
    scale: float = 1.0  # every weight multiplied by this

    def __post_init__(self):
        if not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")


def _label(options, source):
    words = f"scale {options.get('scale')}"
    return "untrained", words, words


@kinds.register("untrained", options=UntrainedOptions, method="untrained", label=_label, in_sweeps=True)
def untrained(cfg, run_dir, *, overwrite=False, resume=False, progress=None):
    opts = kinds.get("untrained").make_options(cfg.method)
    with (lifecycle.thread_policy(cfg, run_dir, resume) as cfg,
          lifecycle.run_folder(cfg, run_dir, overwrite, resume) as rf):
        model, bundle = lifecycle.build(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(opts.scale)
        report = lifecycle.finish(model, bundle, cfg, rf.path, {"method": "untrained", "options": asdict(opts)},
                                  rf.name)
        write_report(rf.path / runs.REPORT, report)  # last: it marks the run finished
    return report
