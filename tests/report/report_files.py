"""Run folders written by hand for the report's tests: a finished run's summary.json and config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DONE = {"status": "done", "model": "mlp", "dataset": "digits", "bits_w": 2, "bits_a": 2, "seed": 0,
        "epochs": 3, "test_acc": 90.0, "gbops": 0.02}


def write_run(folder: Path, method: str, first: Any, last: Any, **record: Any) -> Path:
    """A finished run's folder: summary.json and the .hydra/config.yaml holding its layer policy."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({**DONE, "method": method, **record}))
    (folder / ".hydra" / "config.yaml").write_text(
        f"seed: 0\nquant:\n  first_layer: {first}\n  last_layer: {last}\n  per_channel: true\n")
    return folder
