"""Run folders written by hand for the report's tests: a finished run's summary.json and config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qnnrun.report.records import CURVE_TAG

DONE = {"status": "done", "model": "mlp", "dataset": "digits", "bits_w": 2, "bits_a": 2, "seed": 0,
        "epochs": 3, "test_acc": 90.0, "gbops": 0.02}


def write_run(folder: Path, method: str, first: Any, last: Any, **record: Any) -> Path:
    """A finished run's folder: summary.json, the .hydra/config.yaml holding its seed and layer policy,
    and the TensorBoard events of its last epoch's test accuracy, as a run writes them."""
    from torch.utils.tensorboard import SummaryWriter

    (folder / ".hydra").mkdir(parents=True)
    summary = {**DONE, "method": method, **record}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / ".hydra" / "config.yaml").write_text(
        f"seed: {summary['seed']}\nquant:\n  first_layer: {first}\n  last_layer: {last}\n  per_channel: true\n")
    with SummaryWriter(str(folder)) as writer:
        writer.add_scalar(CURVE_TAG, summary["test_acc"], summary["epochs"])
    return folder
