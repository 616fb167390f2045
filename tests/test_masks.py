import warnings

import pytest
import torch
from torch import nn

from edgeprune import masks
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
