"""A partition planner declared outside edgeprune, as a user's own would be: importing this module registers it.

"halves" offers one plan per device tier: the device runs the first half of the blocks and the first other tier the
rest (or, with one tier, everything), priced by Scission's cost model."""

from edgeprune.partition.planners import register
from edgeprune.partition.records import Stage
from edgeprune.partition.scission import price


@register("halves")
def halves(benches, roles, links, opts):
    n = len(next(iter(benches.values())).blocks)
    others = [t for t, r in roles.items() if r != "device"]
    plans = []
    for device in (t for t, r in roles.items() if r == "device"):
        if not others:
            plans.append(price([Stage(device, "device", 0, n)], benches, links, False))
            continue
        plans.append(price([Stage(device, "device", 0, n // 2), Stage(others[0], roles[others[0]], n // 2, n)],
                           benches, links, False))
    return plans
