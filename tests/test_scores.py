import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import Tiny
from torch import nn
from torch.autograd.functional import hvp

from edgeprune import masks, models, scores
from edgeprune.errors import ConfigError, UnknownNameError

CRITERIA = ["grasp", "magnitude", "random", "snip", "synflow"]
W1 = torch.tensor([[1.0, -2.0], [0.5, 1.0]])
W2 = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
X = torch.tensor([[1.0, 2.0]])
Y = torch.tensor([0])


def _two_layer() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(W1)
        net[2].weight.copy_(W2)
    return net


def _loss(w1: torch.Tensor, w2: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    return F.cross_entropy(F.linear(F.relu(F.linear(X.to(w1), w1)), w2) / t, Y)


def _batches(n: int = 2, shape=(1, 8, 8), classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, *shape, generator=g), torch.randint(0, classes, (4,), generator=g)) for _ in range(n)]


def test_registry_lists_every_criterion_with_its_needs():
    assert scores.list_criteria() == CRITERIA
    assert [c for c in CRITERIA if scores.needs_data(c)] == ["grasp", "snip"]
    assert {c: scores.default_rounds(c) for c in CRITERIA} == dict.fromkeys(CRITERIA, 1) | {"synflow": 100}


def test_magnitude_is_the_absolute_weight():
    s = scores.score("magnitude", _two_layer())
    assert torch.equal(s["0.weight"], W1.abs()) and torch.equal(s["2.weight"], W2.abs())


def test_snip_is_weight_times_gradient_by_hand():
    # h = W1 x = (-3, 2.5), a = relu(h) = (0, 2.5), out = W2 a = (5, 1.25); dL/dout = softmax(out) - e_y
    a = torch.tensor([0.0, 2.5])
    d_out = torch.softmax(torch.tensor([5.0, 1.25]), 0) - torch.tensor([1.0, 0.0])
    g2 = torch.outer(d_out, a)
    g1 = torch.outer((W2.T @ d_out) * torch.tensor([0.0, 1.0]), X[0])
    s = scores.score("snip", _two_layer(), [(X, Y)])
    torch.testing.assert_close(s["0.weight"], (W1 * g1).abs())
    torch.testing.assert_close(s["2.weight"], (W2 * g2).abs())


def test_snip_sums_gradients_over_num_batches():
    model, batches = Tiny(), _batches(3)
    names = list(masks.prunable(model))
    grads = []
    for x, y in batches[:2]:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append([model.get_parameter(n).grad.clone() for n in names])
    s = scores.score("snip", model, batches, num_batches=2)
    for i, n in enumerate(names):
        torch.testing.assert_close(s[n], (model.get_parameter(n).detach() * (grads[0][i] + grads[1][i])).abs())


@pytest.mark.parametrize("criterion", ["snip", "grasp"])
def test_data_criteria_normalise_with_batch_statistics_whatever_the_callers_mode(criterion):
    model = Tiny()
    model.bn.running_mean.fill_(5.0)
    in_train = scores.score(criterion, model.train(), _batches())
    in_eval = scores.score(criterion, model.eval(), _batches())
    for n in in_train:
        torch.testing.assert_close(in_eval[n], in_train[n], rtol=0, atol=0)


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_is_plus_weight_times_hessian_gradient_product(temperature):
    # GraSP removes the highest -θ⊙Hg, so with higher = keep the score is +θ⊙Hg.
    w = (W1.double(), W2.double())
    g = torch.autograd.grad(_loss(*[t.requires_grad_() for t in w], temperature), w)
    _, hg = hvp(lambda a, b: _loss(a, b, temperature), tuple(t.detach() for t in w), g)
    s = scores.score("grasp", _two_layer(), [(X, Y)], temperature=temperature)
    assert hg[1].abs().max() > 0
    torch.testing.assert_close(s["0.weight"].double(), W1.double() * hg[0], rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(s["2.weight"].double(), W2.double() * hg[1], rtol=1e-4, atol=1e-12)


def test_synflow_closed_form_on_a_two_layer_net():
    # R = 1ᵀ|W2| relu(|W1| 1): dR/dW1[i, j] = Σ_k |W2[k, i]|, dR/dW2[k, i] = (|W1| 1)_i
    s = scores.score("synflow", _two_layer(), input_shape=(2,))
    assert s["0.weight"].dtype == torch.float64
    torch.testing.assert_close(s["0.weight"], W1.abs().double() * W2.abs().sum(0).double()[:, None])
    torch.testing.assert_close(s["2.weight"], W2.abs().double() * W1.abs().sum(1).double()[None, :])


@pytest.mark.slow
def test_synflow_in_float32_keeps_nearly_the_same_weights_and_rejects_other_precisions():
    # float32 halves the bytes of every pass; its rounding flips near-ties, which cascade over 100 rounds
    # (VGG-16: 0.8 % of the kept weights, benchmarks/results/prune_time.md). On ResNet-20 none flips.
    runs = {}
    for precision in ("float64", "float32"):
        torch.manual_seed(0)
        model = models.create("resnet20", 10, 1)
        scorer = scores.scorer("synflow", input_shape=(1, 28, 28), precision=precision)
        runs[precision] = masks.prune_iteratively(model, scorer, 0.1, rounds=100)
    differ = sum(int((runs["float64"][n] != runs["float32"][n]).sum()) for n in runs["float64"])
    kept = sum(int(m.sum()) for m in runs["float64"].values())
    assert differ / 2 <= 0.01 * kept
    single = scores.score("synflow", _two_layer(), input_shape=(2,), precision="float32")
    assert single["0.weight"].dtype == torch.float32
    with pytest.raises(ConfigError, match="precision must be one of float64, float32, got 'half'"):
        scores.score("synflow", _two_layer(), input_shape=(2,), precision="half")


def _plain_synflow(model: nn.Module, shape: tuple) -> dict:
    """SynFlow by its definition, nothing reused: a fresh float64 |·| copy, autograd on the weights."""
    names = list(masks.prunable(model))
    net = masks.baked_copy(model).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    weights = [net.get_parameter(n).requires_grad_(True) for n in names]
    flow = torch.autograd.grad(net(torch.ones(1, *shape, dtype=torch.float64)).sum(), weights)
    return {n: (g * w.detach()).abs() for n, g, w in zip(names, flow, weights, strict=True)}


class _Uncovered(nn.Module):
    """Layers the fast paths leave to autograd: a grouped conv, a strided one with 'valid' padding, a conv and
    a linear layer called twice; plus a covered conv with stride and dilation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, dilation=2, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2, padding=1)
        self.again = nn.Conv2d(4, 4, 3, padding=1)
        self.valid = nn.Conv2d(4, 6, 2, padding="valid")
        self.twice = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.again(F.relu(self.again(F.relu(self.grouped(F.relu(self.conv(x))))))))
        x = F.relu(self.valid(x)).mean((2, 3))
        return self.fc(self.twice(F.relu(self.twice(x))))


@pytest.mark.parametrize("name", ["resnet20", "vgg5", "uncovered"])
def test_synflow_masks_are_those_of_plain_float64_autograd_and_scores_agree_to_rounding(name):
    # The fast path (convs as explicit GEMMs in another operand order, weight gradients as one GEMM per layer
    # into kept buffers, a scorer set up once) sums in another order than torch's float64 convolution, so the
    # scores may differ in the last bits (relative 1e-12 allowed; seen: ~1e-16), never the kept set: the masks
    # must be equal every round. It fails if a layer's gradient is wrong or missing (a conv called twice).
    shape = {"resnet20": (1, 28, 28), "vgg5": (3, 32, 32), "uncovered": (2, 9, 9)}[name]
    torch.manual_seed(0)
    fast = _Uncovered() if name == "uncovered" else models.create(name, 10, shape[0])
    plain = copy.deepcopy(fast)
    rescore, rounds = scores.scorer("synflow", input_shape=shape), 12
    for d in masks.density_schedule(0.05, rounds):
        a, b = rescore(fast), _plain_synflow(plain, shape)
        assert list(a) == list(b)
        for n in a:
            torch.testing.assert_close(a[n], b[n], rtol=1e-12, atol=0)
        chosen_a, chosen_b = masks.select(a, d), masks.select(b, d)
        assert all(torch.equal(chosen_a[n], chosen_b[n]) for n in a)
        masks.apply(fast, chosen_a)
        masks.apply(plain, chosen_b)
    kept_fast, kept_plain = masks.current(fast, list(a)), masks.current(plain, list(b))
    assert all(torch.equal(kept_fast[n], kept_plain[n]) for n in kept_fast)
    assert 0 < sum(int(m.sum()) for m in kept_fast.values()) < sum(m.numel() for m in kept_fast.values())


def test_synflow_score_gives_the_caller_scores_of_its_own():
    model = Tiny()
    rescore = scores.scorer("synflow", input_shape=(1, 8, 8))
    first = {n: s.clone() for n, s in rescore(model).items()}
    masks.apply(model, masks.select(scores.score("random", model), 0.5, scope="layer"))
    kept = scores.score("synflow", model, input_shape=(1, 8, 8))
    again = scores.score("synflow", model, input_shape=(1, 8, 8))
    assert all(torch.equal(kept[n], again[n]) and kept[n] is not again[n] for n in kept)
    assert any(not torch.equal(first[n], kept[n]) for n in kept)


def test_synflow_needs_no_data_and_ignores_it():
    model = Tiny()
    plain = scores.score("synflow", model, input_shape=(1, 8, 8))
    with_data = scores.score("synflow", model.train(), _batches(), input_shape=(1, 8, 8))
    other_data = scores.score("synflow", model.eval(), _batches(seed=1), input_shape=(1, 8, 8))
    for n in plain:
        assert torch.equal(plain[n], with_data[n]) and torch.equal(plain[n], other_data[n])
    kept, kept_other = masks.select(plain, 0.3), masks.select(other_data, 0.3)
    assert all(torch.equal(kept[n], kept_other[n]) for n in kept)


def test_random_is_uniform_and_deterministic_by_seed():
    model = Tiny()
    a, b = scores.score("random", model), scores.score("random", model, seed=0)
    c = scores.score("random", model, seed=1)
    for n, w in model.named_parameters():
        if n in a:
            assert a[n].shape == w.shape and torch.equal(a[n], b[n]) and not torch.equal(a[n], c[n])
            assert 0 <= a[n].min() and a[n].max() < 1


def test_pruned_weights_score_zero_and_magnitude_reads_the_current_weights():
    model = Tiny()
    keep = masks.select(scores.score("random", model), 0.5, scope="layer")
    masks.apply(model, keep)
    with torch.no_grad():  # an optimizer step: weight_orig changes, .weight is refreshed only at the next forward
        model.conv.weight_orig.add_(1.0)
    mag = scores.score("magnitude", model)
    assert torch.equal(mag["conv.weight"], (model.conv.weight_orig * model.conv.weight_mask).abs())
    for crit in ["grasp", "snip", "synflow"]:
        s = scores.score(crit, model, _batches(), input_shape=(1, 8, 8))
        for n, m in keep.items():
            assert torch.all(s[n][m == 0] == 0), (crit, n)


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [(len(m._forward_pre_hooks), len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()],
        "weights": [getattr(m, "weight", None) for m in model.modules()],
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert v.dtype == after["state"][k].dtype and torch.equal(v, after["state"][k]), k
    for key in ("training", "requires_grad", "hooks"):
        assert before[key] == after[key], key
    assert all(g is None for g in after["grads"])
    assert all(a is b for a, b in zip(before["weights"], after["weights"], strict=True))  # same tensor objects


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("state", ["train", "eval", "masked"])
def test_the_callers_model_is_left_exactly_as_it_was(criterion, state):
    model = Tiny()
    model.bn.running_mean.normal_()  # non-trivial BN statistics: a train-mode forward would move them
    model.train(state != "eval")
    if state == "masked":
        masks.apply(model, masks.select(scores.score("random", model), 0.5, scope="layer"))
        model.fc.weight_orig.requires_grad_(False)  # a frozen weight must stay frozen
    before = _snapshot(model)
    scores.score(criterion, model, _batches(), input_shape=(1, 8, 8))
    _assert_same(before, _snapshot(model))


def test_scoring_works_inside_no_grad_and_with_frozen_weights():
    model = Tiny()
    model.conv.weight.requires_grad_(False)
    with torch.no_grad():
        s = scores.score("snip", model, _batches())
    assert s["conv.weight"].abs().sum() > 0 and not model.conv.weight.requires_grad


def test_only_the_selected_weights_are_scored():
    model = Tiny()
    for crit in CRITERIA:
        assert list(scores.score(crit, model, _batches(), input_shape=(1, 8, 8), include=["fc.*"])) == ["fc.weight"]
        assert list(scores.score(crit, model, _batches(), input_shape=(1, 8, 8), exclude=["fc.*"])) == ["conv.weight"]
    with pytest.raises(ConfigError, match="no prunable weights"):
        scores.score("magnitude", model, include=["nothing*"])


@pytest.mark.parametrize("criterion", ["snip", "grasp"])
def test_data_criteria_without_data_say_how_to_give_it(criterion):
    with pytest.raises(ConfigError, match=f"{criterion}.*needs data.*batches"):
        scores.score(criterion, Tiny())
    with pytest.raises(ConfigError, match="empty"):
        scores.score(criterion, Tiny(), [])
    with pytest.raises(ConfigError, match="num_batches"):
        scores.score(criterion, Tiny(), _batches(), num_batches=0)


def test_bad_names_and_options_are_config_errors():
    with pytest.raises(UnknownNameError, match="did you mean 'snip'"):
        scores.score("snp", Tiny())
    with pytest.raises(UnknownNameError, match="synflow"):
        scores.default_rounds("synflw")
    with pytest.raises(ConfigError, match="input_shape"):
        scores.score("synflow", Tiny())
    with pytest.raises(ConfigError, match="no option 'temprature'.*temperature"):
        scores.score("grasp", Tiny(), _batches(), temprature=2)


def test_iterative_synflow_avoids_the_layer_collapse_of_global_magnitude():
    # At 99 % sparsity on ResNet-20, global magnitude at init drops the whole classifier (its uniform
    # init never exceeds the tails of the many small 64-channel conv weights); 100 rounds of SynFlow
    # keep every layer alive, without any min-density guard.
    torch.manual_seed(0)
    model = models.create("resnet20", 10, 1)
    with pytest.warns(UserWarning, match="pruned completely.*fc.weight"):
        by_magnitude = masks.select(scores.score("magnitude", model), 0.01, min_layer_density=0)
    assert not by_magnitude["fc.weight"].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = masks.prune_iteratively(model, lambda m: scores.score("synflow", m, input_shape=(1, 8, 8)),
                                       0.01, rounds=scores.default_rounds("synflow"), min_layer_density=0)
    assert all(m.any() for m in kept.values())
    assert sum(int(m.sum()) for m in kept.values()) == round(0.01 * sum(m.numel() for m in kept.values()))


@pytest.mark.parametrize("criterion", CRITERIA)
def test_a_scorer_rescores_what_the_model_is_now(criterion):
    # scores.scorer may set up once (SynFlow's float64 copy); whatever changes, it must score as `score` would.
    model, other = Tiny(), Tiny()
    run = scores.scorer(criterion, _batches(), input_shape=(1, 8, 8))

    def same(a: dict, b: dict) -> bool:
        return list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)

    def fresh(m: nn.Module) -> dict:
        return scores.score(criterion, m, _batches(), input_shape=(1, 8, 8))

    assert same(run(model), fresh(model))
    masks.apply(model, masks.select(scores.score("random", model), 0.5, scope="layer"))  # new masks
    assert same(run(model), fresh(model))
    with torch.no_grad():  # weights changed in place (an optimizer step)
        model.conv.weight_orig.mul_(-2.0)
        model.fc.bias.add_(1.0)
    assert same(run(model), fresh(model))
    model.bn.running_var.fill_(4.0)  # a buffer
    assert same(run(model), fresh(model))
    assert same(run(other), fresh(other))  # another model
