"""Scores: one tensor per prunable weight, higher = keep. Criteria score; `masks.select` decides.

`score(name, model, batches, input_shape=..., **options)`; `list_criteria()`, `needs_data(name)`,
`default_rounds(name)`; `scorer(name, model, ...)` is `score` as a function of the model, for
`masks.prune_iteratively`; new criteria register with `@register(name)` (see registry.py).
"""

# Importing the criterion modules registers them.
from edgeprune.scores import grasp, magnitude, rand, snip, synflow  # noqa: F401
from edgeprune.scores.registry import SCORERS, default_rounds, list_criteria, needs_data, register, score, scorer

__all__ = ["SCORERS", "default_rounds", "list_criteria", "needs_data", "register", "score", "scorer"]
