"""Scission's constraints on plans (`--blocks`, `--max-upload`, `--max-time`, `--split`), and the fastest plans that
meet them all, whichever planner made them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import ConfigError, EdgePruneError
from .records import Plan


class NoPlanError(EdgePruneError):
    """The constraints leave no plan."""


@dataclass(frozen=True)
class Constraint:
    """One of Scission's constraints; `text` is how the user wrote it, named when it removes the last plan."""

    text: str
    ok: Callable[[Plan], bool]


def block_constraint(spec: str, roles: Mapping[str, str], n_blocks: int) -> list[Constraint]:
    """`TIER:SPEC` (`--blocks device:0,1,!5`): blocks that must (or, with `!`, must not) run on a tier (a tier name
    or a role)."""
    tier, sep, items = spec.partition(":")
    if not sep or not items:
        raise ConfigError(f"--blocks {spec!r}: write TIER:BLOCKS, e.g. device:0,1 or cloud:!20")
    _check_tier(tier, roles, "--blocks")
    out = []
    for item in items.split(","):
        item = item.strip()
        neg = item.startswith("!")
        try:
            block = int(item.removeprefix("!"))
        except ValueError:
            raise ConfigError(f"--blocks {spec!r}: {item!r} is not a block index (or !index)") from None
        if not 0 <= block < n_blocks:
            raise ConfigError(f"--blocks {spec!r}: block {block} does not exist; the model has blocks 0-{n_blocks - 1}")
        text = f"--blocks {tier}:{item}"
        if neg:
            out.append(Constraint(text, lambda p, b=block: tier not in (p.where(b).tier, p.where(b).role)))
        else:
            out.append(Constraint(text, lambda p, b=block: tier in (p.where(b).tier, p.where(b).role)))
    return out


def limit_constraint(kind: str, spec: str, roles: Mapping[str, str]) -> Constraint:
    """`--max-upload TIER=MB` (bytes the tier sends) or `--max-time TIER=MS` / `TIER=P%` (its compute time, or its
    share of the plan's total)."""
    tier, sep, value = spec.partition("=")
    if not sep:
        raise ConfigError(f"--{kind} {spec!r}: write TIER=VALUE, e.g. device=0.5")
    _check_tier(tier, roles, f"--{kind}")
    share = kind == "max-time" and value.endswith("%")
    try:
        limit = float(value.removesuffix("%") if share else value)
    except ValueError:
        raise ConfigError(f"--{kind} {spec!r}: {value!r} is not a number") from None
    if limit < 0:
        raise ConfigError(f"--{kind} {spec!r}: the limit must be >= 0")
    text = f"--{kind} {spec}"
    if kind == "max-upload":
        return Constraint(text, lambda p: p.upload_bytes(tier) <= limit * 1e6)
    if share:
        return Constraint(text, lambda p: p.tier_ms(tier) <= limit / 100 * p.total_ms)
    return Constraint(text, lambda p: p.tier_ms(tier) <= limit)


def _check_tier(tier: str, roles: Mapping[str, str], option: str) -> None:
    if tier not in roles and tier not in roles.values():
        known = ", ".join(f"{t} ({r})" for t, r in roles.items())
        raise ConfigError(f"{option}: no tier or role {tier!r}; tiers: {known}")


def best(plans: Iterable[Plan], constraints: Sequence[Constraint] = (), k: int = 5) -> list[Plan]:
    """The k fastest plans that meet every constraint. Raises NoPlanError naming the constraint that removed the
    last candidate."""
    left = list(plans)
    for c in constraints:
        kept = [p for p in left if c.ok(p)]
        if not kept:
            raise NoPlanError(f"no plan satisfies the constraints: {c.text} removed the last {len(left)} "
                              "candidate(s); relax it")
        left = kept
    return sorted(left, key=lambda p: p.total_ms)[:k]
