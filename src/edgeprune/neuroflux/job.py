"""A NeuroFlux run, as `edgeprune neuroflux` and sweeps start it: a RunConfig in (command "neuroflux", its
options in `method`), a run folder out whose model is the chosen early exit (model.pt, model.onnx, report.json),
so that quantize, serve and partition take it like any other run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import data, kinds, lifecycle
from ..errors import ConfigError
from ..progress import Reporter
from ..record import RunConfig, RunReport, write_report
from ..runs import REPORT
from .train import Settings, train
from .watch import bound_heap


def settings_of(cfg: RunConfig) -> Settings:
    return Settings(**{k: v for k, v in cfg.method.items() if k != "name"})


def _label(options: dict, source: str | None) -> tuple[str, str, str]:
    """Not a pruning method: its budget names it, then the options set otherwise."""
    defaults = dataclasses.asdict(Settings(memory_budget="1MiB"))
    words = ", ".join([f"budget {options.get('memory_budget')}"] + [
        f"{k} {v}" for k, v in sorted(options.items()) if k != "memory_budget" and defaults.get(k, v) != v])
    return "neuroflux", words, words


# its model is trained whole (a trained-run method may start from it), an exit of the config's model
@kinds.register("neuroflux", options=Settings, method="neuroflux", label=_label, trained=True, in_sweeps=True,
                base_model=True)
def run(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
        progress: Reporter | None = None) -> RunReport:
    """Train cfg.model block-wise under the memory budget of cfg.method, save the chosen exit as the run's model."""
    settings = settings_of(cfg)
    if cfg.train.precision != "fp32":
        raise ConfigError(f"training precision {cfg.train.precision} does not apply to neuroflux: its block-wise "
                          "training runs in fp32; leave --precision at fp32")
    bound_heap()  # before the data set and the model are allocated: the whole run follows one allocator rule
    # caching a block's outputs fixes its inputs: the later blocks see the images un-augmented, so all do
    bundle = data.loaders(**{**cfg.data, "augment": False, "val_size": settings.val_size})
    model = lifecycle.fresh_model(cfg, bundle)
    with (lifecycle.thread_policy(cfg, run_dir, resume) as cfg,
          lifecycle.run_folder(cfg, run_dir, overwrite, resume) as rf):
        result = train(model, bundle.train.dataset, bundle.val.dataset, bundle.num_classes, bundle.input_shape,
                       cfg.train, cfg.data.get("batch_size", 128), settings, rf.path, resume=rf.mode == "resume",
                       device=cfg.device, progress=progress)
        report = lifecycle.finish(result.model, bundle, cfg, rf.path, {
            "method": "neuroflux", "options": settings.to_dict(),
            "train": {"epochs": [e for b in result.info["blocks"] for e in b["epochs"]],
                      "seconds": result.info["seconds"]}}, rf.name)
        report.details["neuroflux"] = result.info
        write_report(rf.path / REPORT, report)
    return report
