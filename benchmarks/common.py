"""What the benchmark scripts share: where results go, and how they are written."""

import json
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def write_results(stem: str, lines: list[str], payload: dict) -> None:
    """Print the Markdown `lines` and write them to results/<stem>.md, and `payload` to results/<stem>.json."""
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2))
