"""An FL job spec (`edgeprune fl run SPEC.yaml`) checked where it enters: every key known, every value of its type,
finite and in range, so a bad value is one line naming it, never a crash later nor a device silently dropped."""

from __future__ import annotations

from ..checks import mapping, number
from ..errors import ConfigError
from . import shares

SPEC_KEYS = {"model": True, "data": True, "rounds": True, "devices": True, "edges": False, "optim": False,
             "moves": False, "seed": False, "test_subset": False, "rtt_ms": False}
DEVICE_KEYS = {"split": True, "edge": False, "factor": False, "mbps": False}
OPTIM_KEYS = {"lr": False, "momentum": False, "weight_decay": False, "decay_round": False}
MOVE_KEYS = {"round": True, "device": True, "iteration": True, "to": True}
DATA_NUMBERS = {"subset": 1, "batch_size": 1, "test_subset": 1}  # (key: least value) where the data spec holds them


def check(spec: object) -> dict:
    """`spec`, checked (see the module docstring); ConfigError naming the first bad key or value."""
    spec = mapping(spec, "the FL spec", SPEC_KEYS)
    mapping(spec["model"], "the FL spec's model")
    if not isinstance(spec["model"].get("name"), str):
        raise ConfigError(f"the FL spec's model needs a name, e.g. {{name: vgg5}}; got {spec['model']!r}")
    data = mapping(spec["data"], "the FL spec's data")
    if not isinstance(data.get("name"), str):
        raise ConfigError(f"the FL spec's data needs a name, e.g. {{name: fashion-mnist}}; got {data!r}")
    for key, least in DATA_NUMBERS.items():
        if data.get(key) is not None:
            number(data[key], f"data.{key}", at_least=least, integer=True)
    if "seed" in data:
        number(data["seed"], "data.seed", at_least=0, integer=True)
    shares.check(data)
    number(spec["rounds"], "rounds", at_least=1, integer=True)
    number(spec.get("seed", 0), "seed", at_least=0, integer=True)
    number(spec.get("rtt_ms", 0.0), "rtt_ms", at_least=0)
    if spec.get("test_subset") is not None:
        number(spec["test_subset"], "test_subset", at_least=1, integer=True)
    edges = spec.get("edges", [])
    if not isinstance(edges, list) or not all(isinstance(e, str) and e for e in edges) or len(set(edges)) < len(edges):
        raise ConfigError(f"edges must be a list of distinct edge names, e.g. [edge0, edge1]; got {edges!r}")
    devices = spec["devices"]
    if not isinstance(devices, list) or not devices:
        raise ConfigError(f"devices must be a list of devices, one mapping each (e.g. - {{split: 2, edge: edge0}}); "
                          f"got {devices!r}")
    for k, d in enumerate(devices):
        mapping(d, f"device {k}", DEVICE_KEYS)
        number(d["split"], f"device {k}'s split", at_least=0, integer=True)
        number(d.get("factor", 1.0), f"device {k}'s factor", at_least=1,
               hint="how many times slower than this machine; 1 is as fast")
        number(d.get("mbps", 1000.0), f"device {k}'s mbps", above=0)
        if d.get("edge") is not None and d["edge"] not in edges:
            raise ConfigError(f"device {k}'s edge {d['edge']!r} is not among the spec's edges {edges}; add it there")
    optim = mapping(spec.get("optim", {}), "optim", OPTIM_KEYS)
    number(optim.get("lr", 0.01), "optim.lr", above=0)
    number(optim.get("momentum", 0.9), "optim.momentum", at_least=0, below=1)
    number(optim.get("weight_decay", 0.0), "optim.weight_decay", at_least=0)
    number(optim.get("decay_round", 0), "optim.decay_round", at_least=0, integer=True,
           hint="the first round at lr x 0.1 (FedAdapt: half the rounds); 0 never decays")
    moves = spec.get("moves", [])
    if not isinstance(moves, list):
        raise ConfigError(f"moves must be a list of moves, e.g. [{{round: 2, device: 0, iteration: 2, to: edge1}}]; "
                          f"got {moves!r}")
    for i, m in enumerate(moves):
        mapping(m, f"move {i}", MOVE_KEYS)
        for key in ("round", "device", "iteration"):
            number(m[key], f"move {i}'s {key}", at_least=0 if key == "device" else 1, integer=True)
        if m["to"] not in edges:
            raise ConfigError(f"move {i} to edge {m['to']!r}: not among the spec's edges {edges}; add it there")
    return spec
