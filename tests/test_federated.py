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
    from edgeprune.federated.fedfly import same_weights

    assert same_weights(a, b)


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
@pytest.mark.slow
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



def test_move_of_unknown_device_and_invalid_split_are_refused_before_the_run():
    from edgeprune.federated.apps import Job, Move

    kw = dict(model=MODEL, data=DATA, devices=2, rounds=2, edges=[None, None])
    with pytest.raises(ConfigError, match="unknown device 5: the job has devices 0-1"):
        Job(**kw, splits=[7, 7], moves=[Move(1, 5, 0, "x:1")])
    with pytest.raises(ConfigError, match=r"split 0 .* one of \[1, 2"):
        Job(**kw, splits=[0, 7])


MODEL = {"name": "vgg5", "num_classes": 10, "in_channels": 1, "image_size": 28}
DATA = {"name": "synthetic", "shape": [1, 28, 28], "size": 64, "batch_size": 8, "seed": 0}


@pytest.fixture(scope="module")
def flower_runs(edges):
    """One seeded Flower job three ways: no offloading; device 0 offloading to edge 0; the same with device 0
    moving to edge 1 in round 2 after 2 of its 4 iterations (FedFly)."""
    pytest.importorskip("flwr")
    from edgeprune.federated.apps import Job, Move
    from edgeprune.federated.flower import simulate

    def job(splits, moves=(), second_edge=None):
        return Job(model=MODEL, data=DATA, devices=2, rounds=2, splits=splits, edges=[edges[0], second_edge],
                   optim=OPTIM, moves=list(moves))

    return {"classic": simulate(job([7, 7])), "split": simulate(job([3, 7])),
            "moved": simulate(job([3, 7], [Move(2, 0, 2, edges[1])])),
            "unreachable": simulate(job([3, 3], second_edge="127.0.0.1:9"))}


@pytest.mark.slow
def test_flower_rounds_with_a_split_client_equal_classic_fl(flower_runs):
    a, b = flower_runs["classic"]["state_dict"], flower_runs["split"]["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rounds = flower_runs["split"]["history"]
    assert [r["splits"] for r in rounds] == [[3, 7], [3, 7]]
    assert rounds[0]["devices"][0]["bytes_up"] > 0 and rounds[0]["devices"][1]["bytes_up"] == 0
    assert rounds[0]["devices"][0]["iterations"] == 4 and rounds[0]["dropped"] == []


@pytest.mark.slow
def test_fedfly_migration_leaves_the_global_model_bit_identical(flower_runs):
    a, b = flower_runs["split"]["state_dict"], flower_runs["moved"]["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    moved = flower_runs["moved"]["history"][1]["devices"][0]
    assert moved["moved"] == 1 and moved["migration_s"] > 0


@pytest.mark.slow
def test_a_device_whose_edge_is_unreachable_is_left_out_of_the_round_and_recorded(flower_runs):
    rounds = flower_runs["unreachable"]["history"]
    assert [sorted(r["devices"]) for r in rounds] == [[0], [0]]
    assert all(len(r["dropped"]) == 1 and "device 1: EdgeUnreachable: edge 127.0.0.1:9" in r["dropped"][0]
               for r in rounds)


# ------------------------------------------------------------------------------------------------ FedAdapt


def test_grouping_is_kmeans_on_iteration_times_fastest_first():
    pytest.importorskip("sklearn")
    from edgeprune.federated.fedadapt import group

    assert group([2.0, 0.1, 0.5, 0.11, 0.52], groups=3) == [2, 0, 1, 0, 1]
    with pytest.raises(ConfigError, match="groups=6 for 5 devices"):
        group([1, 2, 3, 4, 5], groups=6)


def test_cost_model_measures_every_layer_of_vgg5():
    pytest.importorskip("gymnasium")
    from edgeprune.federated.fedadapt import measure

    cost = measure(vgg5(), (1, 28, 28), batch=4, repeats=2)
    assert cost.n == 7 and all(t > 0 for t in cost.layer_s)
    # conv 32 at 28x28, pooled to 14x14, conv 64, pooled to 7x7: float32 activations up and gradients down
    assert cost.bytes[:4] == [2 * 4 * n * 4 + 8 * 4 for n in (32 * 28 * 28, 32 * 14 * 14, 64 * 14 * 14, 64 * 7 * 7)]
    assert cost.share(7) == 1.0 and cost.share(1) < cost.share(2) < cost.share(3) < cost.share(4) < cost.share(5) < 1
    assert cost.options() == [1, 2, 3, 4, 5, 7]


def toy_env(mbps: float, steps: int = 20, **kw):
    from edgeprune.federated.fedadapt import CostModel, FedAdaptEnv

    # 7 layers of 1 s except the FC block; 1 MB crosses any cut
    cost = CostModel([1.0] * 5 + [0.1, 0.1], [1_000_000] * 7, [1.0] * 5 + [0.1, 0.1], batch=100)
    bandwidth = kw.pop("bandwidth", lambda t, rng: [mbps] * 3)
    return FedAdaptEnv(cost, factors=[1.0, 10.0, 10.0], groups=[0, 1, 1], bandwidth=bandwidth, steps=steps, **kw)


def test_discrete_actions_are_indices_among_the_split_options():
    pytest.importorskip("gymnasium")
    env = toy_env(80.0, discrete=True)
    assert env.action_space.nvec.tolist() == [6, 6]  # options 1-5 and 7 (no offloading), per group
    assert env.splits_of([5, 0]) == [7, 1]
    _, _, _, _, info = env.step([5, 0])
    assert info["splits"] == [7, 1]


@pytest.mark.slow
def test_ppo_with_discrete_actions_offloads_over_a_fast_link_and_not_over_a_slow_one():
    pytest.importorskip("stable_baselines3")
    from edgeprune.federated.fedadapt import train_ppo

    def episode_link(t, rng):  # one link per episode, fast or slow, that the agent sees
        if t == 0:
            episode_link.mbps = float(rng.choice([0.1, 80.0]))
        return [episode_link.mbps] * 3

    env = toy_env(80.0, bandwidth=episode_link, see_links=True, stop_at_baseline=False, discrete=True)
    agent = train_ppo(env, timesteps=6000, seed=0)
    for mbps, slow_group in ((80.0, 1), (0.1, 7)):  # 80 s to send 1 MB at 0.1 Mbit/s: keep every layer
        times = env.times([7, 7], [mbps] * 3)
        action, _ = agent.predict(env.observe([7, 7], times, [mbps] * 3), deterministic=True)
        assert env.splits_of(action)[1] == slow_group


def test_env_state_action_and_reward_follow_fedadapt():
    pytest.importorskip("gymnasium")
    env = toy_env(mbps=80.0)  # 0.1 s per iteration on the wire
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [1.0, 1.0, 1.0, 1.0]  # no offloading: times at baseline, all FLOPs on the device
    assert env.splits_of([1.0, -1.0]) == [7, 1]  # actions in [-1, 1]: FLOP shares 1 and 0
    obs, reward, done, _, info = env.step([1.0, -1.0])
    b, t = 10 * 5.2, 10 * 1.0 + 4.2 + 0.1  # the slow devices: baseline and offloaded after layer 1
    assert info["times"] == pytest.approx([5.2, t, t])
    assert reward == pytest.approx(2 * (b - t) / b)
    assert obs[2] == pytest.approx(t / b) and not done


def test_oracle_offloads_over_a_fast_link_and_keeps_layers_over_a_slow_one():
    pytest.importorskip("gymnasium")
    from edgeprune.federated.fedadapt import oracle

    assert oracle(toy_env(80.0), [80.0] * 3) == [7, 1]
    assert oracle(toy_env(0.1), [0.1] * 3) == [7, 7]  # 80 s to send 1 MB


def test_the_oracle_policy_gives_each_device_its_groups_split_for_the_next_rounds_links():
    pytest.importorskip("gymnasium")
    from edgeprune.federated.fedadapt import OraclePolicy

    env = toy_env(80.0)
    links = {2: [80.0] * 3, 3: [0.1] * 3}  # the link drops in round 3
    policy = OraclePolicy(env, lambda round_: links[round_])
    assert policy(1, {}) == [7, 1, 1]  # after round 1, for round 2: the slow group offloads
    assert policy(2, {}) == [7, 7, 7]  # for round 3, at 0.1 Mbit/s: it keeps every layer


@pytest.mark.slow
def test_ppo_learns_to_offload_the_slow_group():
    pytest.importorskip("stable_baselines3")
    from edgeprune.federated.fedadapt import oracle, train_ppo

    env = toy_env(80.0)
    agent = train_ppo(env, timesteps=3000, seed=0)
    obs, _ = env.reset(seed=1)
    action, _ = agent.predict(obs, deterministic=True)
    best = oracle(env, [80.0] * 3)
    _, _, _, _, info = env.step(action)
    assert info["round_s"] <= 1.1 * max(env.times(best, [80.0] * 3))


# ------------------------------------------------------------------------------------------------ FedFly


def test_fedfly_migration_and_restart_end_with_the_unmoved_model(edges):
    from edgeprune.federated import fedfly

    data = [batches(3, seed=r) for r in range(2)]
    kw = dict(make_model=vgg5, split=3, batches=lambda r: data[r], rounds=2, optim=OPTIM, source=edges[0],
              destination=edges[1])
    still = fedfly.train(**kw, move_at=None)
    moved = fedfly.train(**kw, move_at=0.5, device="mover")
    restarted = fedfly.train(**kw, move_at=0.5, restart=True, device="restarter")
    assert fedfly.same_weights(still["model"], moved["model"])
    assert fedfly.same_weights(still["model"], restarted["model"])
    assert (still["iterations"], moved["iterations"], restarted["iterations"]) == (6, 6, 9)
    assert 0 < moved["migration_s"] < 2 and moved["move_failed"] is None


def test_move_point_and_bad_fraction():
    from edgeprune.federated.fedfly import move_point

    assert move_point([4, 4, 4], 0.5) == (1, 2) and move_point([4, 4, 4], 0.9) == (2, 3)
    with pytest.raises(ConfigError, match="move at 1.5 of training"):
        move_point([4], 1.5)


def test_checkpoint_of_another_model_is_refused_and_the_device_stays(edges):
    other = vgg5()
    sp.train_round(other, 2, batches(1), OPTIM, device="clash", edge=sp.EdgeClient(edges[1]))  # edge 1: split 2
    model = vgg5()
    stats = sp.train_round(model, 3, batches(3), OPTIM, device="clash", edge=sp.EdgeClient(edges[0]),
                           move=(1, edges[1]))
    assert stats.moved_to is None and "CheckpointError" in stats.move_failed and "split 2" in stats.move_failed
    reference = unsplit(vgg5(), batches(3))  # nothing was lost: the round finished on the source
    assert_same(model, reference)


def test_unknown_device_and_unreachable_edge_have_clear_errors(edges):
    with pytest.raises(sp.EdgeRefused, match="no training state for device 'ghost'"):
        sp.EdgeClient(edges[0]).call("Pull", {"device": "ghost"})
    with pytest.raises(sp.EdgeUnreachable, match=r"127.0.0.1:9 did not answer Health .* after 3 tries"):
        sp.EdgeClient("127.0.0.1:9", retries=2, backoff_s=0.01, timeout_s=2).call("Health", {})
    stats = sp.train_round(vgg5(), 3, batches(2), OPTIM, device="d9", edge=sp.EdgeClient(edges[0]),
                           move=(0, "127.0.0.1:9"))
    assert stats.moved_to is None and "EdgeUnreachable" in stats.move_failed


# ------------------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("spec, message", [
    ("model: {name: vgg5}\ndata: {name: synthetic}\nrounds: 1\ndevices: [{split: 3, edge: e9}]\nedges: [e0]\n",
     "device 0's edge 'e9' is not among the spec's edges ['e0']"),
    ("model: {name: vgg5}\nrounds: 1\ndevices: []\nwrong: 1\n", "the FL spec has unknown key 'wrong'"),
    ("[1, 2]\n", "is not a mapping"),
])
def test_fl_run_refuses_a_bad_spec_in_one_line(tmp_path, spec, message):
    from typer.testing import CliRunner

    from edgeprune.cli import app

    path = tmp_path / "job.yaml"
    path.write_text(spec)
    result = CliRunner().invoke(app, ["fl", "run", str(path)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_learning_rate_decays_tenfold_from_decay_round_on():
    optim = sp.Optim(lr=0.01, momentum=0.9, decay_round=11)
    assert optim.at(1) == optim and optim.at(10).lr == 0.01
    assert optim.at(11).lr == pytest.approx(0.001) and optim.at(20).lr == pytest.approx(0.001)
    assert optim.at(11).make([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"] == pytest.approx(0.001)
    assert sp.Optim(lr=0.01).at(99).lr == 0.01  # decay_round 0: never


def test_a_bad_decay_round_is_refused_in_one_line():
    from edgeprune.federated.spec import check

    with pytest.raises(ConfigError, match="optim.decay_round must be an integer >= 0"):
        check({"model": {"name": "vgg5"}, "data": {"name": "synthetic"}, "rounds": 2, "devices": [{"split": 3}],
               "optim": {"decay_round": 1.5}})
