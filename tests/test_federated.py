"""Split training over gRPC, FedFly migration, Flower rounds and FedAdapt's environment (edgeprune.federated)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("grpc")

from edgeprune.errors import ConfigError  # noqa: E402
from edgeprune.federated import split as sp  # noqa: E402
from edgeprune.models import create  # noqa: E402

OPTIM = sp.Optim(lr=0.05, momentum=0.9, weight_decay=5e-4)


def batches(n: int = 6, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def vgg5() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("vgg5", num_classes=10, in_channels=1, image_size=28)


def unsplit(model: torch.nn.Module, data) -> torch.nn.Module:
    """The reference: plain training of the whole model with one optimiser."""
    model.train()
    opt = OPTIM.make(model.parameters())
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def edges():
    """Two edge servers, each a process of its own."""
    started = [sp.start_edge(f"edge{i}") for i in range(2)]
    yield [address for _, address in started]
    for proc, _ in started:
        sp.stop_edge(proc)


def test_valid_splits_and_invalid_split_lists_them():
    model = vgg5()
    assert sp.valid_splits(model) == [1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ConfigError, match=r"split 9 .* one of \[1, 2, 3, 4, 5, 6, 7\]"):
        sp.halves(model, 9)


@pytest.mark.parametrize("split", [1, 3, 5, 7])
def test_split_training_over_grpc_equals_unsplit_training(edges, split):
    torch.set_num_threads(1)
    model, reference = vgg5(), vgg5()
    stats = sp.train_round(model, split, batches(), OPTIM, device="d0", edge=sp.EdgeClient(edges[0]))
    unsplit(reference, batches())
    assert_same(model, reference)
    assert stats.iterations == 6 and stats.samples == 48
    if split < 7:
        assert stats.bytes_up > 0 and stats.bytes_down > 0 and stats.edge_s > 0
    else:
        assert stats.bytes_up == 0

