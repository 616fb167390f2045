import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _fixed_threads():
    """Tests run on two shared cores: keep torch to one thread so timings and results are stable."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class Tiny(nn.Module):
    """Conv-BN-ReLU-pool-linear: every layer kind the measurement and masks must handle."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


class SlowTiny(Tiny):
    """Tiny, 50 ms a training batch: a cell that stays in flight long enough to be stopped or killed mid-run."""

    def forward(self, x):
        if self.training:
            import time

            time.sleep(0.05)
        return super().forward(x)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Tiny()


def small_vgg(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A plain conv chain (no residuals), small enough to prune and train in a test."""
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(in_channels, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32), *block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def randomize_bn(model: nn.Module, seed: int = 0, bias_shift: float = -0.5) -> nn.Module:
    """Distinct BN values (non-zero shifts included), so kept-vs-removed channels are told apart, dead
    channels output non-zero constants, and outputs are not degenerate. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.rand(n, generator=g) + bias_shift
            m.running_mean = torch.rand(n, generator=g) - 0.5
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


@pytest.fixture
def interrupt(monkeypatch):
    """`interrupt(step)`: the next run's training (edgeprune.jobs.fit) stops with KeyboardInterrupt once
    `step` optimiser steps are done, as Ctrl-C would; the checkpoints written before it stay."""
    from edgeprune import jobs
    from edgeprune.train import Callback

    real_fit = jobs.fit

    class Stop(Callback):
        def __init__(self, at):
            self.at = at

        def on_step_end(self, model, step):
            if step == self.at:
                raise KeyboardInterrupt

    def arm(step: int) -> None:
        def fit(*args, **kwargs):
            monkeypatch.setattr(jobs, "fit", real_fit)  # only the next run is interrupted
            return real_fit(*args, **{**kwargs, "callbacks": [*kwargs.get("callbacks", ()), Stop(step)]})

        monkeypatch.setattr(jobs, "fit", fit)

    return arm


def prune_config(method: dict, epochs: int = 3):
    """A `prune` job on conftest.Tiny over 128 synthetic 1x8x8 samples in batches of 32 (4 steps an epoch)."""
    from edgeprune import jobs
    from edgeprune.train import TrainConfig

    return jobs.RunConfig(
        command="prune", model="conftest:Tiny",
        data={"name": "synthetic", "shape": (1, 8, 8), "num_classes": 3, "size": 128, "batch_size": 32},
        train=TrainConfig(epochs=epochs, lr=0.05), measure=jobs.MeasureOptions(runs=2, warmup=0, memory=False),
        method=method)
