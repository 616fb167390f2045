import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune import masks, models, scores
from edgeprune.errors import ConfigError


def _scores(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"l{i}.weight": torch.rand(s, generator=g) for i, s in enumerate(shapes)}


@pytest.mark.parametrize("density", [0.5, 0.1, 0.013, 1.0])
def test_global_selection_keeps_exactly_the_requested_count(density):
    s = _scores((16, 8, 3, 3), (32, 16, 3, 3), (10, 32))
    total = sum(v.numel() for v in s.values())
    m = masks.select(s, density, min_layer_density=0)
    assert sum(int(v.sum()) for v in m.values()) == round(density * total)
    # and they are the highest scores: every kept score >= every dropped score
    flat_s = torch.cat([v.flatten() for v in s.values()])
    flat_m = torch.cat([v.flatten() for v in m.values()]).bool()
    if density < 1:
        assert flat_s[flat_m].min() >= flat_s[~flat_m].max()


def test_layer_scope_keeps_the_fraction_of_every_layer():
    s = _scores((16, 8, 3, 3), (10, 32))
    m = masks.select(s, 0.25, scope="layer")
    assert [int(v.sum()) for v in m.values()] == [round(0.25 * 1152), 80]


def test_ties_are_broken_deterministically_by_position():
    s = {"a.weight": torch.ones(10), "b.weight": torch.ones(10)}
    with pytest.warns(UserWarning, match="b.weight"):
        m = masks.select(s, 0.35, min_layer_density=0)
    assert m["a.weight"].tolist() == [1.0] * 7 + [0.0] * 3 and not m["b.weight"].any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_top_k_is_the_k_largest_with_ties_to_the_lower_index(dtype):
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 50, (5000,), generator=g).to(dtype)  # many ties
    values[::7] = -torch.inf  # as masks.select marks dead weights
    for k in (0, 1, 13, 700, 2500, 4999, 5000):
        keep = masks.top_k(values, k)
        # reference: a stable sort by (value descending, index ascending)
        order = sorted(range(values.numel()), key=lambda i: (-float(values[i]), i))
        assert keep.dtype == torch.bool and int(keep.sum()) == k
        assert keep.nonzero().flatten().tolist() == sorted(order[:k])


def test_guard_keeps_every_layer_alive():
    s = {"big.weight": torch.rand(1000) + 1, "small.weight": torch.rand(100)}  # small always loses
    with pytest.warns(UserWarning, match="small.weight"):
        unguarded = masks.select(s, 0.05, min_layer_density=0)
    assert not unguarded["small.weight"].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guarded = masks.select(s, 0.05, min_layer_density=0.02)
    assert int(guarded["small.weight"].sum()) == 2
    assert sum(int(v.sum()) for v in guarded.values()) == 55  # still exact


def test_guard_that_cannot_be_met_is_an_error():
    s = _scores((100,), (100,))
    with pytest.raises(ConfigError, match="min_layer_density"):
        masks.select(s, 0.01, min_layer_density=0.05)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_out_of_range(density):
    with pytest.raises(ConfigError, match=str(density)):
        masks.select(_scores((10,)), density)


def test_pruned_weights_are_never_revived():
    s = _scores((50,))
    alive = {"l0.weight": (torch.arange(50) % 2).float()}  # even positions pruned earlier
    s["l0.weight"][::2] += 10  # ...and now score best
    m = masks.select(s, 0.2, alive=alive, min_layer_density=0)
    assert int(m["l0.weight"].sum()) == 10 and not m["l0.weight"][::2].any()


def test_apply_combines_bake_keeps_zeros_and_table_reports(tiny):
    names = list(masks.prunable(tiny))
    assert names == ["conv.weight", "fc.weight"]
    first = masks.select(masks_scores := {n: torch.rand_like(tiny.get_parameter(n)) for n in names}, 0.5)
    masks.apply(tiny, first)
    masks.apply(tiny, masks.select(masks_scores, 0.25, alive=masks.current(tiny, names)))
    assert len(list(masks.masked_modules(tiny))) == 2  # one reparametrisation per weight, not stacked
    kept = sum(r["kept"] for r in masks.table(tiny))
    assert kept == round(0.25 * (36 + 12))
    assert masks.sparsity(masks.current(tiny, names)) == pytest.approx(1 - kept / 48)
    masks.bake(tiny)
    assert not list(masks.masked_modules(tiny))
    assert int(torch.count_nonzero(tiny.conv.weight)) + int(torch.count_nonzero(tiny.fc.weight)) == kept


def test_prunable_patterns_and_nothing_left(tiny):
    assert list(masks.prunable(tiny, exclude=["fc.*"])) == ["conv.weight"]
    assert list(masks.prunable(tiny, include=["fc.*"])) == ["fc.weight"]
    with pytest.raises(ConfigError, match="no prunable weights"):
        masks.prunable(nn.Sequential(nn.ReLU()))
    with pytest.raises(ConfigError, match="loosen"):
        masks.prunable(tiny, exclude=["*"])


def test_iterative_schedule_reaches_the_target_density(tiny):
    names = list(masks.prunable(tiny))
    seen = []

    def scorer(m):
        seen.append(masks.sparsity(masks.current(m, names)))
        return {n: m.get_submodule(n.rpartition(".")[0]).weight.abs() for n in names}

    final = masks.prune_iteratively(tiny, scorer, 0.1, rounds=5, min_layer_density=0)
    assert sum(int(v.sum()) for v in final.values()) == round(0.1 * 48)
    assert seen == sorted(seen) and seen[0] == 0  # re-scored on the ever sparser model
    assert masks.density_schedule(0.1, 2) == pytest.approx([0.1**0.5, 0.1])


def test_iteration_keeps_weight_equal_to_orig_times_mask(tiny):
    # Dropped weights are zeroed in place between rounds: `.weight` must stay the reparametrisation's product.
    masks.prune_iteratively(tiny, lambda m: {"conv.weight": masks.current(m, ["conv.weight"])["conv.weight"]
                                             * torch.arange(36.0).view(4, 1, 3, 3)}, 0.25, rounds=3)
    assert torch.equal(tiny.conv.weight, tiny.conv.weight_orig * tiny.conv.weight_mask)
    assert int(tiny.conv.weight_mask.sum()) == 9 and torch.all(tiny.conv.weight_mask.flatten()[-9:] == 1)


def _plain_select(scores: dict, density: float, alive: dict | None) -> dict:
    """Global top-k with the 1 % layer-collapse guard, written plainly with stable descending sorts (ties to
    the lower index): each layer's best live ceil(1 %), then the best of the other live weights."""
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    flat = torch.cat([scores[n].detach().flatten().double() for n in names])
    live = torch.cat([alive[n].flatten() != 0 for n in names]) if alive else torch.ones(flat.numel(), dtype=torch.bool)

    def best(candidates: torch.Tensor, count: int) -> torch.Tensor:
        return candidates[torch.sort(flat[candidates], descending=True, stable=True).indices[:count]]

    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    start = 0
    for size in sizes:
        layer_live = live[start:start + size].nonzero().flatten() + start
        keep[best(layer_live, max(1, math.ceil(0.01 * size)))] = True
        start += size
    k = round(density * flat.numel())
    keep[best((live & ~keep).nonzero().flatten(), k - int(keep.sum()))] = True
    return {n: m.float().view_as(scores[n]) for n, m in zip(names, keep.split(sizes), strict=True)}


def _plain_synflow(model: nn.Module, names: list[str], shape: tuple[int, ...]) -> dict:
    net = masks.baked_copy(model).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    weights = [net.get_parameter(n).requires_grad_(True) for n in names]
    g = torch.autograd.grad(net(torch.ones(1, *shape, dtype=torch.float64)).sum(), weights)
    return {n: (w.detach() * gi).abs() for n, w, gi in zip(names, weights, g, strict=True)}


def _plain_snip(model: nn.Module, names: list[str], batch) -> dict:
    net = masks.baked_copy(model).train()
    weights = [net.get_parameter(n) for n in names]
    g = torch.autograd.grad(F.cross_entropy(net(batch[0]), batch[1]), weights)
    return {n: (w.detach() * gi).abs() for n, w, gi in zip(names, weights, g, strict=True)}


@pytest.mark.parametrize(("criterion", "model_name", "rounds"), [
    pytest.param("synflow", "resnet20", 100, marks=pytest.mark.slow),
    pytest.param("synflow", "mobilenetv2", 20, marks=pytest.mark.slow),
    pytest.param("synflow", "vgg16", 4, marks=pytest.mark.slow),
    ("snip", "resnet20", 1), pytest.param("snip", "vgg16", 1, marks=pytest.mark.slow), ("snip", "mobilenetv2", 1)])
def test_pruning_keeps_exactly_the_masks_of_a_plain_implementation(criterion, model_name, rounds):
    # The fast path (SynFlow's copy made once, selection on the live weights, in-place updates) must choose
    # bit for bit what scoring a fresh copy and sorting every round chooses. Small inputs, fewer SynFlow
    # rounds on the big models: the weights, and so the selection, are full size.
    shape = (3, 8, 8)
    torch.manual_seed(0)
    model = models.create(model_name, 10, 3)
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g))
    fast = masks.prune_iteratively(model, scores.scorer(criterion, [batch], input_shape=shape), 0.1, rounds=rounds)

    names = list(masks.prunable(reference))
    alive = None
    for d in masks.density_schedule(0.1, rounds):
        s = _plain_synflow(reference, names, shape) if criterion == "synflow" else _plain_snip(reference, names, batch)
        alive = _plain_select(s, d, alive)
        masks.apply(reference, alive)
    assert list(fast) == names
    for n in names:
        assert torch.equal(fast[n], alive[n]), n
    assert sum(int(m.sum()) for m in fast.values()) == round(0.1 * sum(m.numel() for m in fast.values()))
