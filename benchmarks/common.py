"""What the benchmark scripts share: where results go."""

from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
