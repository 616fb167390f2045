"""FedAdapt: group devices by speed, and let a PPO agent choose each group's split from measured costs.

- `group`: k-means (scikit-learn) on the devices' measured per-iteration times, groups numbered fastest first.
- `CostModel`: each layer's forward+backward time per batch and each split's activation bytes, measured on this
  machine, and each split's share of the model's FLOPs (torch.utils.flop_counter). A device `factor` times slower
  than this machine, over a link of `mbps` and `rtt_ms`, takes factor x device layers + edge layers + transfer per
  iteration. It is a model: every result built on it says `clock: modelled`.
- `FedAdaptEnv`: FedAdapt's environment (gymnasium). State, per group, of its slowest device: the iteration time
  normalised by its no-offloading time, and its offloading state (the FLOP share run on the device); with
  `see_links`, also its link. Action, per group, a target FLOP share in [0, 1] (the agent acts in [-1, 1]), mapped
  to the split whose share is closest; FedAdapt's last two layers (the FC block) form one option, no offloading.
  With `discrete`, the action is instead the index of the group's split among the same options: on VGG-5's cost
  model, PPO trained on the continuous share never learnt to offload (benchmarks/results/fl_cifar10.md).
  Reward: sum over devices of (b-t)/b if t < b else -(t-b)/t, b being the device's no-offloading time. An episode
  ends when the slowest device is no faster than without offloading (FedAdapt's rule; `stop_at_baseline=False`
  runs every episode to its length). Bandwidths may change during an episode.
- Policies: `train_ppo` (stable-baselines3 PPO, FedAdapt's 64-32 tanh networks, gamma 0.9, clip 0.2, lr 3e-4, std
  starting at FedAdapt's 0.5), `oracle` (every combination of group splits, fastest round); a fixed split is a
  constant list. `AgentPolicy` and `OraclePolicy` run the agent and the oracle in a Flower run (apps.Policy).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from . import split as sp


def group(iteration_s: Sequence[float], groups: int = 3, seed: int = 0) -> list[int]:
    """FedAdapt's grouping: k-means on per-iteration times; group 0 is the fastest."""
    from sklearn.cluster import KMeans

    if not 1 <= groups <= len(iteration_s):
        raise ConfigError(f"groups={groups} for {len(iteration_s)} devices: choose 1 to {len(iteration_s)}")
    t = np.asarray(iteration_s, dtype=float).reshape(-1, 1)
    km = KMeans(groups, n_init=10, random_state=seed).fit(t)
    rank = {c: r for r, c in enumerate(np.argsort(km.cluster_centers_.ravel()))}
    return [rank[c] for c in km.labels_]


@dataclass
class CostModel:
    """Per-layer costs of one training iteration at one batch size, measured on this machine."""

    layer_s: list[float]  # forward + backward of each layer, seconds per batch
    bytes: list[int]  # activations + labels up and gradients down per batch, for split k at index k-1
    flops: list[float]  # per layer, forward
    batch: int

    @property
    def n(self) -> int:
        return len(self.layer_s)

    def options(self) -> list[int]:
        """FedAdapt's choices: every split up to the FC block, then the FC block and no offloading as one."""
        return [*range(1, self.n - 1), self.n]

    def share(self, k: int) -> float:
        """The FLOP share of the model that split k runs on the device."""
        return float(sum(self.flops[:k]) / sum(self.flops))

    def iteration_s(self, k: int, factor: float, mbps: float, rtt_ms: float = 0.0) -> float:
        device = factor * sum(self.layer_s[:k])
        if k == self.n:
            return device
        return device + sum(self.layer_s[k:]) + self.bytes[k - 1] * 8 / (mbps * 1e6) + rtt_ms / 1e3

    def to_dict(self) -> dict:
        return {"layer_s": self.layer_s, "bytes": self.bytes, "flops": self.flops, "batch": self.batch,
                "clock": "modelled"}


def measure(model: nn.Module, input_shape: Sequence[int], batch: int = 100, repeats: int = 10) -> CostModel:
    """Time each layer's forward and backward on a batch (median of `repeats`, process CPU time), count its FLOPs and
    each split's bytes on the wire (the activation and int64 labels up, the gradient down)."""
    from torch.utils.flop_counter import FlopCounterMode

    layers = sp.halves(model, sp.valid_splits(model)[-1])[0]
    model.train()
    x = torch.randn(batch, *input_shape)
    layer_s, flops, sizes = [], [], []
    for layer in layers:
        x = x.detach().requires_grad_()
        with FlopCounterMode(display=False) as fc:
            y = layer(x)
        # the forward's; the counter sees only matmuls and convolutions, so a pool counts one operation per input
        # element (as FedAdapt's FLOP table counts pooling): a split after a pool then differs from one before it
        flops.append(float(fc.get_total_flops()) or float(x.numel()))
        times = []
        for _ in range(repeats):
            t0 = time.process_time()  # CPU time, as split.RoundStats: the work, not the wait for a shared core
            layer(x).sum().backward()
            times.append(time.process_time() - t0)
        layer_s.append(float(np.median(times)))
        sizes.append(y.numel() * y.element_size())
        x = y
    return CostModel(layer_s, [2 * s + 8 * batch for s in sizes], flops, batch)


class FedAdaptEnv(gym.Env):
    """Gymnasium environment over a CostModel (see the module docstring). `factors[d]`: device d's slowdown against
    this machine; `bandwidth(step, rng) -> Mbit/s per device` gives each step's links."""

    def __init__(self, cost: CostModel, factors: Sequence[float], groups: Sequence[int],
                 bandwidth: Callable[[int, np.random.Generator], Sequence[float]], rtt_ms: float = 0.0,
                 steps: int = 100, noise: float = 0.0, stop_at_baseline: bool = True, see_links: bool = False,
                 discrete: bool = False):
        self.cost, self.factors, self.groups = cost, list(factors), list(groups)
        self.g = max(groups) + 1
        self.bandwidth, self.rtt_ms, self.steps, self.noise = bandwidth, rtt_ms, steps, noise
        self.stop_at_baseline, self.see_links, self.discrete = stop_at_baseline, see_links, discrete
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, ((3 if see_links else 2) * self.g,), np.float32)
        if discrete:
            # per group, the index of its split among cost.options(): the same choices as the continuous share,
            # which maps to the closest of them, but each one a separate action a policy can learn to prefer
            self.action_space = gym.spaces.MultiDiscrete([len(cost.options())] * self.g)
        else:
            # FedAdapt's action is a share in [0, 1]; the agent acts in [-1, 1] (share = (a + 1) / 2) so that a
            # fresh Gaussian policy, centred on 0, starts in the middle of the shares as FedAdapt's sigmoid actor
            # does, not at the edge where every layer but the first is offloaded
            self.action_space = gym.spaces.Box(-1.0, 1.0, (self.g,), np.float32)
        self.rng = np.random.default_rng(0)
        self._t = 0
        self._mbps: Sequence[float] = []
        self.baseline = [cost.iteration_s(cost.n, f, 1.0) for f in self.factors]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._t = 0
        splits = [self.cost.n] * self.g
        return self.observe(splits, self._times(splits), self._mbps), {}

    def splits_of(self, action: Sequence[float]) -> list[int]:
        """Each group's action in [-1, 1], a target FLOP share (a + 1) / 2 -> the option whose share is closest;
        with `discrete`, each group's action is the index of its option."""
        opts = self.cost.options()
        if self.discrete:
            return [opts[int(a)] for a in action]
        shares = np.array([self.cost.share(k) for k in opts])
        return [opts[int(np.argmin(np.abs(shares - (float(a) + 1) / 2)))] for a in np.clip(action, -1, 1)]

    def per_device(self, group_splits: Sequence[int]) -> list[int]:
        """Each device's split, from its group's."""
        return [group_splits[g] for g in self.groups]

    def times(self, group_splits: Sequence[int], mbps: Sequence[float]) -> list[float]:
        """Each device's modelled iteration time with these group splits, at these bandwidths."""
        return [self.cost.iteration_s(group_splits[g], f, b, self.rtt_ms)
                for g, f, b in zip(self.groups, self.factors, mbps, strict=True)]

    def _times(self, group_splits: Sequence[int]) -> list[float]:
        self._mbps = self.bandwidth(self._t, self.rng)
        times = self.times(group_splits, self._mbps)
        if self.noise:
            times = [t * float(self.rng.lognormal(0, self.noise)) for t in times]
        return times

    def observe(self, group_splits: Sequence[int], times: Sequence[float], mbps: Sequence[float],
                baseline: Sequence[float] | None = None) -> np.ndarray:
        """FedAdapt's state: per group, its slowest device's time over that device's baseline (by default the
        cost model's no-offloading time), and the FLOP share the group's split runs on the device; with
        `see_links`, also that device's link (log10 Mbit/s / 2). Without it, a group that does not offload sees
        the same state at any bandwidth, so it cannot tell when offloading would pay again."""
        baseline = self.baseline if baseline is None else baseline
        obs = []
        for g in range(self.g):
            members = [d for d, gd in enumerate(self.groups) if gd == g]
            slowest = max(members, key=lambda d: times[d])
            obs += [times[slowest] / baseline[slowest], self.cost.share(group_splits[g])]
            if self.see_links:
                obs.append(float(np.log10(mbps[slowest])) / 2)
        return np.asarray(obs, dtype=np.float32)

    def step(self, action):
        group_splits = self.splits_of(action)
        times = self._times(group_splits)
        self._t += 1
        reward = sum((b - t) / b if t < b else -(t - b) / t for t, b in zip(times, self.baseline, strict=True))
        # FedAdapt ends an episode when the slowest device is no faster than without offloading; with links that
        # drop mid-episode that ends it at the drop, before the agent can learn to react (stop_at_baseline=False)
        done = self.stop_at_baseline and max(times) >= max(self.baseline)
        info = {"splits": group_splits, "times": times, "round_s": max(times), "mbps": list(self._mbps)}
        return self.observe(group_splits, times, self._mbps), float(reward), bool(done), self._t >= self.steps, info


def oracle(env: FedAdaptEnv, mbps: Sequence[float]) -> list[int]:
    """The group splits with the fastest round (slowest device) at these bandwidths, every combination tried; ties
    go to the least total time (a group off the critical path keeps the split that suits it)."""
    def cost(group_splits):
        times = env.times(group_splits, mbps)
        return max(times), sum(times)

    return list(min(itertools.product(env.cost.options(), repeat=env.g), key=cost))


def train_ppo(env: FedAdaptEnv, timesteps: int = 10_000, seed: int = 0, rollout: int = 100, batch: int = 50):
    """A PPO agent (stable-baselines3) with FedAdapt's hyper-parameters, trained on `env`; with continuous actions
    its initial std, 1 in the agent's [-1, 1], is FedAdapt's 0.5 in shares (SB3 then learns it, where FedAdapt keeps
    it fixed); with discrete ones (`env.discrete`) each group's split is drawn from a categorical distribution.
    `rollout`: environment steps per update. With links drawn once per episode, a rollout of one episode fits every
    update to that episode's links and the policy collapses onto one split whatever the links (measured on VGG-5's
    cost model); a rollout of many episodes (e.g. 2,000 steps, 20 episodes, with `batch` 100) learns to offload
    over a fast link and not over a slow one."""
    from stable_baselines3 import PPO

    return PPO("MlpPolicy", env, learning_rate=3e-4, n_steps=rollout, batch_size=batch, n_epochs=10, gamma=0.9,
               clip_range=0.2, seed=seed, device="cpu", verbose=0,
               policy_kwargs={"net_arch": {"pi": [64, 32], "vf": [64, 32]}, "activation_fn": nn.Tanh,
                              "log_std_init": 0.0}).learn(timesteps)


def measured_iteration_s(stats: dict, factor: float, mbps: float, rtt_ms: float = 0.0) -> float:
    """A device's iteration time in a round of a real run (a `split.RoundStats` dict), on the modelled clock: its
    own layers' measured time x `factor`, the edge's measured time, the bytes it moved over `mbps`, and one RTT per
    iteration when it offloads."""
    n = stats["iterations"]
    wire = (stats["bytes_up"] + stats["bytes_down"]) * 8 / (mbps * 1e6) + (n * rtt_ms / 1e3 if stats["bytes_up"] else 0)
    return (factor * stats["device_s"] + stats["edge_s"] + wire) / n


class AgentPolicy:
    """FedAdapt in a Flower run (apps.Policy): the first round runs without offloading and gives each device's
    baseline; after every round the agent sees, per group, its slowest device's time over its baseline and the
    group's offloading state, and sets the next round's splits. Times are measured: on the wall clock with emulated
    devices (`wall`), else on the modelled clock (`measured_iteration_s` at `bandwidth(round)` Mbit/s per device)."""

    def __init__(self, agent, env: FedAdaptEnv, bandwidth: Callable[[int], Sequence[float]], wall: bool = False):
        self.agent, self.env, self.bandwidth, self.wall = agent, env, bandwidth, wall
        self.baseline: list[float] | None = None

    def __call__(self, round_: int, record: dict) -> list[int]:
        mbps = self.bandwidth(round_)
        devices = record["devices"]
        if self.wall:
            times = [devices[d]["wall_s"] / devices[d]["iterations"] for d in range(len(self.env.factors))]
        else:
            times = [measured_iteration_s(devices[d], f, mbps[d], self.env.rtt_ms)
                     for d, f in enumerate(self.env.factors)]
        if self.baseline is None:
            self.baseline = times
        group_splits = [record["splits"][self.env.groups.index(g)] for g in range(self.env.g)]
        action, _ = self.agent.predict(self.env.observe(group_splits, times, mbps, self.baseline), deterministic=True)
        return self.env.per_device(self.env.splits_of(action))


class OraclePolicy:
    """The exhaustive oracle in a Flower run (apps.Policy): after each round, the group splits with the fastest
    next round by the cost model, given that round's links `bandwidth(round + 1)` (which no real agent knows)."""

    def __init__(self, env: FedAdaptEnv, bandwidth: Callable[[int], Sequence[float]]):
        self.env, self.bandwidth = env, bandwidth

    def __call__(self, round_: int, record: dict) -> list[int]:
        return self.env.per_device(oracle(self.env, self.bandwidth(round_ + 1)))
