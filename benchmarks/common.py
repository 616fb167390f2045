"""What the benchmark scripts share: where results go, and how they are written."""

import json
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def write_results(stem: str, lines: list[str], payload: dict) -> None:
    """Print the Markdown `lines` and write them to results/<stem>.md, and `payload` to results/<stem>.json."""
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2))


def measured(script: str, env: dict, *versions: str, load: list[float] | None = None) -> str:
    """The opening of a result's text, 'Measured DATE by `benchmarks/SCRIPT` on N CPU cores, LIB VERSION…';
    `env` is measure.environment(), `versions` the keys of it to name (e.g. "torch", "onnxruntime"), `load` the
    os.getloadavg() taken as the measurement ended."""
    libs = "".join(f", {v} {env[v]}" for v in versions)
    end = "" if load is None else ", load average " + ", ".join(f"{v:.2f}" for v in load) + " when it ended"
    return f"Measured {time.strftime('%Y-%m-%d')} by `benchmarks/{script}` on {env['cpu_count']} CPU cores{libs}{end}"
