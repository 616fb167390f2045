"""A serving policy declared outside edgeprune, as a user's own would be: importing this module registers it.

"most-accurate" serves the most accurate variant whose profiled p50 is within `max_ms` (all of them by default),
whatever the server measures."""

from dataclasses import dataclass

from edgeprune.errors import ConfigError
from edgeprune.serve.policy import Decision, Policy, Window, register


@register("most-accurate", tasks=("classify",))
@dataclass
class MostAccurate(Policy):
    max_ms: float = 1e6
    name: str = "most-accurate"

    def __post_init__(self) -> None:
        if not self.max_ms > 0:
            raise ConfigError(f"policy 'most-accurate': max_ms must be > 0, got {self.max_ms}")

    def decide(self, window: Window) -> Decision:
        ok = [v for v in self.manifest.variants if v.p50_ms <= self.max_ms] or self.manifest.variants
        want = max(ok, key=lambda v: v.accuracy)
        return Decision(self.name, window.variant, want.id, want.p50_ms <= self.max_ms, {"max_ms": self.max_ms},
                        f"most accurate variant within {self.max_ms:g} ms (profiled p50)")
