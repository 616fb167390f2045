"""FedAdapt and FedFly re-measured (issue 19): VGG-5 on a Fashion-MNIST subset, 5 emulated devices.

What is real and what is modelled:
- real: split training over gRPC between processes (the devices are Flower Simulation Engine clients, Ray actors;
  the edge server is a process of its own), FedAvg over Flower, the accuracies (PyTorch, Fashion-MNIST test
  subset), the compute times of every device's and the edge's layers, and the bytes each device moved;
- modelled: the devices' speed (this machine's measured compute x a speed factor per device, set below, not
  measured on a Pi or a Jetson) and the links (bytes / bandwidth + one RTT per iteration). Every time below is on
  this modelled clock (`clock: modelled`), except FedFly's, which are wall-clock on this machine (no factors, no
  link: devices and edges are processes talking over loopback).

FedAdapt: a cost model measured here, k-means groups (3) on the devices' baseline iteration times, a PPO agent
(stable-baselines3) trained on FedAdapt's environment with random bandwidths and drops, then
1. the environment over a fixed schedule (devices 3-4's link drops from 50 to 5 Mbit/s at round DROP) with four
   policies: classic FL (no offloading), a fixed split, PPO, the exhaustive oracle;
2. two real Flower runs, classic FL and FedAdapt (the agent choosing each round's splits from the measured times),
   their total time on the modelled clock and their accuracy.
FedFly: one device, 5 rounds of split training (split 3) with a move to a second edge at 50 % and 90 % of its
iterations: migrated, or restarted at the destination; 3 interleaved repeats, medians.

    nice -n 10 env PYTHONPATH=src .venv/bin/python benchmarks/fl.py     # about 10 min on 2 busy cores

Results: benchmarks/results/fl.{md,json}.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import measured, write_results  # noqa: E402

from edgeprune.data import loaders  # noqa: E402
from edgeprune.federated import apps, fedadapt, fedfly, flower, shares  # noqa: E402
from edgeprune.federated import split as sp  # noqa: E402
from edgeprune.measure import environment  # noqa: E402
from edgeprune.models import create  # noqa: E402
from edgeprune.train import evaluate  # noqa: E402

MODEL = {"name": "vgg5", "num_classes": 10, "in_channels": 1, "image_size": 28}
DATA = {"name": "fashion-mnist", "subset": 2500, "batch_size": 100, "seed": 0}  # 500 samples, 5 batches a device
TEST_SUBSET = 2000
FACTORS = [5.0, 15.0, 15.0, 30.0, 30.0]  # slowdown vs this machine: a Jetson-like, two Pi 4-like, two Pi 3-like
MBPS, DROPPED_MBPS, RTT_MS = 50.0, 5.0, 5.0
ROUNDS, DROP = 8, 5  # from round DROP on, devices 3 and 4 are on DROPPED_MBPS
OPTIM = sp.Optim(lr=0.01, momentum=0.9)
FIXED_SPLIT = 3
PPO_STEPS = 60_000
SEE_LINKS = True  # the agent sees each group's link too: FedAdapt's state alone learnt never to offload
FEDFLY_IMAGES = 500


def steady(round_: int) -> list[float]:
    return [MBPS] * len(FACTORS)


def dropping(round_: int, drop: int = DROP) -> list[float]:
    """Devices 3 and 4's links drop from round `drop` on."""
    return [MBPS] * 3 + [DROPPED_MBPS if round_ >= drop else MBPS] * 2


def training_bandwidth(step: int, rng: np.random.Generator, every: int = 0) -> list[float]:
    """What the agent trains on: per episode (and with `every`, again every that many steps of it), each device's
    link log-uniform in 5-100 Mbit/s. Trial runs (not committed) of other settings: 2-100 or 10-100 Mbit/s with
    tenfold drops mid-episode (20-30k steps) and 2-100 without (20k) also ended with an agent that never offloads;
    10-100 without drops (15k) offloaded the slowest group at every bandwidth, the drop included."""
    state = training_bandwidth.__dict__
    if step == 0 or (every and step % every == 0):
        state["base"] = list(np.exp(rng.uniform(np.log(5), np.log(100), len(FACTORS))))
    return state["base"]


def on_env(env, agent):
    """A trained agent as a policy of `env_schedule`."""
    return lambda obs, mbps: env.splits_of(agent.predict(obs, deterministic=True)[0])


def env_schedule(env, policy, bandwidth) -> list[dict]:
    """Run `policy(obs, mbps) -> group splits` on the environment over a bandwidth schedule, the first round without
    offloading (as FedAdapt's); per round the splits and the slowest device's iteration time."""
    out, splits = [], [env.cost.n] * env.g
    times = env.times(splits, bandwidth(1))
    for r in range(1, ROUNDS + 1):
        mbps = bandwidth(r)
        splits = policy(env.observe(splits, times, bandwidth(r - 1)), mbps) if r > 1 else splits
        times = env.times(splits, mbps)
        out.append({"round": r, "splits": list(splits), "iteration_s": max(times)})
    return out


def rounds_to_resplit(splits_per_round: list[list[int]], drop: int = DROP) -> int | None:
    """Rounds after the drop (at round `drop`) until the splits differ from those in force before it (None:
    never)."""
    before = splits_per_round[drop - 2]
    return next((r - drop for r in range(drop, len(splits_per_round) + 1) if splits_per_round[r - 1] != before),
                None)


def real_run(job: dict, policy, evaluate, bandwidth) -> dict:
    """A Flower run; per round its splits, its time on the modelled clock (measured compute and bytes, the
    device factors, the links of `bandwidth(round)`) and the global model's test accuracy."""
    return price(flower.simulate(apps.Job(**job), policy, evaluate), bandwidth)


def price(run: dict, bandwidth) -> dict:
    """A Flower run's rounds on the modelled clock: per round its splits, the slowest device's time, every
    device's (measured compute x factor, edge compute, bytes over `bandwidth(round)`), the global accuracy."""
    rounds = []
    for rec in run["history"]:
        mbps = bandwidth(rec["round"])
        per = [fedadapt.measured_iteration_s(rec["devices"][d], f, mbps[d], RTT_MS) * rec["devices"][d]["iterations"]
               for d, f in enumerate(FACTORS)]
        rounds.append({"round": rec["round"], "splits": rec["splits"], "round_s": max(per), "device_s": per,
                       "accuracy": rec["global"]["accuracy"]})
    return {"rounds": rounds, "total_s": sum(r["round_s"] for r in rounds), "accuracy": rounds[-1]["accuracy"]}


def make_agent(model: dict = MODEL, shape: tuple = (1, 28, 28), steps: int = PPO_STEPS, discrete: bool = False,
               episode: int = 100, rollout: int = 100, batch: int = 50, bandwidth=None) -> tuple:
    """The cost model measured here, FedAdapt's groups, its environment and a PPO agent trained on it (and the
    seconds that took): what this benchmark, fl_emulated.py and fl_cifar10.py share. `discrete`, `episode` (steps
    an episode), `rollout` and `batch`: see fedadapt.FedAdaptEnv and fedadapt.train_ppo; `bandwidth`: the links
    the agent trains on (default `training_bandwidth`)."""
    torch.manual_seed(0)
    cost = fedadapt.measure(create(**model), shape, batch=DATA["batch_size"], repeats=20)
    base = [cost.iteration_s(cost.n, f, MBPS) for f in FACTORS]
    groups = fedadapt.group(base, 3, seed=0)
    env = fedadapt.FedAdaptEnv(cost, FACTORS, groups, bandwidth or training_bandwidth, rtt_ms=RTT_MS,
                               stop_at_baseline=False,
                               see_links=SEE_LINKS, discrete=discrete, steps=episode)
    t0 = time.perf_counter()
    agent = fedadapt.train_ppo(env, timesteps=steps, seed=0, rollout=rollout, batch=batch)
    return cost, groups, env, agent, time.perf_counter() - t0


def fedadapt_part(lines: list[str], payload: dict) -> None:
    cost, groups, env, agent, ppo_s = make_agent()

    policies = {"classic FL": lambda obs, mbps: [cost.n] * env.g, f"fixed split {FIXED_SPLIT}":
                lambda obs, mbps: [FIXED_SPLIT] * env.g, "FedAdapt (PPO)": on_env(env, agent),
                "oracle": lambda obs, mbps: fedadapt.oracle(env, mbps)}
    sched = {(name, sname): env_schedule(env, p, bw) for name, p in policies.items()
             for sname, bw in (("steady", steady), ("drop", dropping))}
    total = {k: sum(r["iteration_s"] for r in rows) for k, rows in sched.items()}
    env_resplit = rounds_to_resplit([r["splits"] for r in sched["FedAdapt (PPO)", "drop"]])
    oracle_resplit = rounds_to_resplit([r["splits"] for r in sched["oracle", "drop"]])
    # a lone device of factor f at MBPS: how much the best split saves over no offloading, by the cost model
    lone = {f: 1 - min(cost.iteration_s(k, f, MBPS, RTT_MS) for k in cost.options()) / cost.iteration_s(cost.n, f, MBPS)
            for f in (2, 5, 10, 20, 30, 50, 100)}

    edge, address = sp.start_edge("edge", threads=1)
    try:
        job = dict(model=MODEL, data=DATA, devices=len(FACTORS), rounds=ROUNDS, edges=[address] * len(FACTORS),
                   optim=OPTIM, splits=[cost.n] * len(FACTORS))
        test = loaders(DATA["name"], batch_size=500, subset=DATA["subset"], test_subset=TEST_SUBSET,
                       augment=False).test

        def acc(model):
            return evaluate(model, test)

        real = {"classic FL": real_run(job, None, acc, steady),
                "FedAdapt (PPO), steady links": real_run(job, fedadapt.AgentPolicy(agent, env, steady), acc, steady),
                f"FedAdapt (PPO), devices 3-4 drop to {DROPPED_MBPS:g} Mbit/s at round {DROP}":
                    real_run(job, fedadapt.AgentPolicy(agent, env, dropping), acc, dropping)}
    finally:
        sp.stop_edge(edge)
    names = list(real)
    classic, adapt, drop = (real[n] for n in names)
    saving = 1 - adapt["total_s"] / classic["total_s"]
    acc_gap = 100 * (classic["accuracy"] - adapt["accuracy"])
    real_resplit = rounds_to_resplit([r["splits"] for r in drop["rounds"]])
    ppo_vs = {s: total["FedAdapt (PPO)", s] / total["oracle", s] for s in ("steady", "drop")}

    lines += [
        "## FedAdapt", "",
        f"VGG-5 (Fashion-MNIST, 28 px), {len(FACTORS)} devices with speed factors {FACTORS} (x this machine's "
        f"measured compute; **assumed**, not measured on devices), links {MBPS:g} Mbit/s, RTT {RTT_MS:g} ms. "
        f"Groups (k-means on baseline times): {groups}. PPO trained for {PPO_STEPS:,} environment steps "
        f"({ppo_s:.0f} s) on random links (5-100 Mbit/s per device and episode), episodes of 100 steps run to the "
        "end. Two departures from FedAdapt, both because its own choices learnt nothing here: the agent also sees "
        "each group's link (FedAdapt's state alone cannot tell a group that does not offload when offloading would "
        "pay; trained so, PPO never offloaded), and an episode does not end when the slowest device is no faster "
        "than without offloading (it ended every episode at the first bad step). Splits: layers on "
        f"the device (7 = no offloading; FedAdapt's first round never offloads). **clock: modelled.**", "",
        "### Real Flower runs (measured compute and bytes, modelled clock)", "",
        f"{ROUNDS} rounds, {DATA['subset']} training images ({DATA['subset'] // len(FACTORS)} a device, batch "
        f"{DATA['batch_size']}, one pass a round), {TEST_SUBSET} test images; one edge server process for all.", "",
        "| run | total time (s) | vs classic | final accuracy | splits per round (devices 0-4) |",
        "|---|---|---|---|---|",
    ]
    for name, r in real.items():
        lines.append(f"| {name} | {r['total_s']:.2f} | {r['total_s'] / classic['total_s']:.2f}x | "
                     f"{100 * r['accuracy']:.2f} % | {splits(r['rounds'])} |")
    lines += ["", "### Policies on the environment (the measured cost model)", "",
              f"Sum over {ROUNDS} rounds of the slowest device's iteration time; 'drop': devices 3-4 at "
              f"{DROPPED_MBPS:g} Mbit/s from round {DROP}. The oracle knows each round's links.", "",
              "| policy | steady (s) | vs oracle | drop (s) | vs oracle | splits per round, drop (groups 0-2) |",
              "|---|---|---|---|---|---|"]
    for name in policies:
        cells = [f"{total[name, s]:.3f} | {total[name, s] / total['oracle', s]:.2f}x" for s in ("steady", "drop")]
        lines.append(f"| {name} | {' | '.join(cells)} | {splits(sched[name, 'drop'])} |")
    lines += ["", "What offloading can save at all, by the cost model: a lone device of speed factor f at "
              f"{MBPS:g} Mbit/s, best split against none: "
              + ", ".join(f"f={f}: {100 * v:.0f} %" for f, v in lone.items()) + ".", ""]
    targets = [
        ("FedAdapt >= 30 % less total training time than classic FL (real runs, steady links)",
         f"{100 * saving:.1f} % less", saving >= 0.30),
        ("final accuracy within 1 point of classic FL", f"{acc_gap:+.2f} points", abs(acc_gap) <= 1),
        ("re-splits within 2 rounds of a bandwidth drop (real run)",
         "did not re-split" if real_resplit is None else f"after {real_resplit} round(s)",
         real_resplit is not None and real_resplit <= 2),
        ("re-splits within 2 rounds of a bandwidth drop (environment; the oracle re-splits after "
         f"{oracle_resplit} round(s))", "did not re-split" if env_resplit is None else f"after {env_resplit} round(s)",
         env_resplit is not None and env_resplit <= 2),
        ("PPO within 10 % of the oracle (environment, total time, steady / drop)",
         f"{ppo_vs['steady']:.3f}x / {ppo_vs['drop']:.3f}x", max(ppo_vs.values()) <= 1.1),
    ]
    lines += ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets]
    payload["fedadapt"] = {"cost_model": cost.to_dict(), "factors": FACTORS, "groups": groups, "mbps": MBPS,
                           "dropped_mbps": DROPPED_MBPS, "drop_round": DROP, "rtt_ms": RTT_MS, "clock": "modelled",
                           "environment": {f"{k[0]} / {k[1]}": v for k, v in sched.items()},
                           "environment_total_s": {f"{k[0]} / {k[1]}": v for k, v in total.items()},
                           "lone_device_saving": lone, "real_runs": real,
                           "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets],
                           "ppo_steps": PPO_STEPS, "ppo_train_s": ppo_s, "data": DATA, "test_subset": TEST_SUBSET}


def fedfly_part(lines: list[str], payload: dict, model_spec: dict = MODEL, data_spec: dict = DATA,
                data_name: str = "Fashion-MNIST", test_subset: int = TEST_SUBSET) -> None:
    share = {**data_spec, "subset": FEDFLY_IMAGES, "batch_size": 50, "seed": 1}
    bundle = loaders(**share, test_subset=test_subset, augment=False)
    rounds = 5
    data = [list(shares.device_batches(share, 0, 1, r)) for r in range(rounds)]

    def model():
        torch.manual_seed(0)
        return create(**model_spec)

    torch.set_num_threads(1)
    edges = [sp.start_edge(f"edge{i}") for i in range(2)]
    try:
        kw = dict(make_model=model, split=3, batches=lambda r: data[r], rounds=rounds, optim=OPTIM,
                  source=edges[0][1], destination=edges[1][1])
        modes = [("no move", None, False), ("migrate at 50 %", 0.5, False), ("restart at 50 %", 0.5, True),
                 ("migrate at 90 %", 0.9, False), ("restart at 90 %", 0.9, True)]
        results: dict[str, list[dict]] = {m[0]: [] for m in modes}
        for rep in range(3):
            for name, at, restart in modes:
                results[name].append(fedfly.train(**kw, move_at=at, restart=restart, device=f"{name}-{rep}"))
    finally:
        for proc, _ in edges:
            sp.stop_edge(proc)
    still = results["no move"][0]["model"]
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "seconds": [r["seconds"] for r in runs], "median_s": statistics.median(r["seconds"] for r in runs),
            "iterations": runs[0]["iterations"], "migration_s": [r["migration_s"] for r in runs],
            "bit_identical_to_no_move": all(fedfly.same_weights(r["model"], still) for r in runs),
            "accuracy": evaluate(runs[0]["model"], bundle.test)["accuracy"],
        }
    lines += ["", "## FedFly", "",
              f"One device, VGG-5 split after layer 3, {rounds} rounds of {len(data[0])} iterations "
              f"({FEDFLY_IMAGES} {data_name} images, batch 50); the edge moves to a second edge server (another "
              "process). clock: wall (this machine, no speed factor, loopback). Medians of 3 interleaved repeats.", ""]
    table, targets = fedfly_tables(summary, "checkpoint, send, restore")
    lines += table
    payload["fedfly"] = {"runs": summary, "rounds": rounds, "clock": "wall",
                         "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets]}


def splits(rows: list[dict]) -> str:
    """Each round's split per device, one digit a device, rounds apart."""
    return " ".join("".join(map(str, r["splits"])) for r in rows)


def fedfly_tables(summary: dict, migration: str) -> tuple[list[str], list[tuple[str, str, bool]]]:
    """FedFly's runs and the issue's targets, as markdown lines, and the targets (what, measured, met);
    `migration` says what the migration time covers."""
    lines = ["| run | median time (s) | iterations | migration (s, max) | final accuracy | bit-identical to no move |",
             "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['median_s']:.2f} | {s['iterations']} | {max(s['migration_s']):.3f} | "
                     f"{100 * s['accuracy']:.2f} % | {'yes' if s['bit_identical_to_no_move'] else '**no**'} |")
    targets = []
    for at, need in ((50, 0.25), (90, 0.38)):
        saving = 1 - summary[f"migrate at {at} %"]["median_s"] / summary[f"restart at {at} %"]["median_s"]
        targets.append((f"migration >= {100 * need:.0f} % less time than restart, move at {at} %",
                        f"{100 * saving:.1f} % less", saving >= need))
    worst = max(max(summary[f"migrate at {a} %"]["migration_s"]) for a in (50, 90))
    targets.append(("migration overhead <= 2 s", f"{worst:.3f} s ({migration})", worst <= 2))
    same = all(summary[f"migrate at {a} %"]["bit_identical_to_no_move"] for a in (50, 90))
    targets.append(("a migrated run's model is bit-identical to the unmoved run's", "yes" if same else "no", same))
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets]
    return lines, targets


def main() -> None:
    env = environment()
    import flwr
    import stable_baselines3

    lines = ["# FedAdapt and FedFly (issue 19)", "",
             f"{measured('fl.py', env, 'torch')}, flwr {flwr.__version__}, stable-baselines3 "
             f"{stable_baselines3.__version__}. Fashion-MNIST subsets, short budgets: accuracies are far from "
             "converged and only compared with each other.", ""]
    payload: dict = {"environment": env}
    adapt: list[str] = []
    fly: list[str] = []
    fedfly_part(fly, payload)  # the quicker half first: a failure there costs less
    fedadapt_part(adapt, payload)
    write_results("fl", lines + adapt + fly, payload)


if __name__ == "__main__":
    main()
