"""scripts/gpu_session.sh, the prepared GPU call: its shell and plans, and a dry run of a plan on a CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_session.sh"
CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def test_gpu_session_parses_and_rejects_an_unknown_plan(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    done = subprocess.run(["bash", str(SCRIPT), "train"], cwd=tmp_path, env={**os.environ, "OUT": str(tmp_path)},
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown plan 'train': speed, baselines" in done.stderr
    assert not list(tmp_path.iterdir())  # nothing set up, nothing written


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_file(), reason=f"needs {CIFAR} (the plan unpacks it)")
def test_gpu_session_baselines_dry_run_on_digits(tmp_path: Path) -> None:
    """The baselines plan end to end on a CPU, with digits and one epoch in place of CIFAR-10: the float
    run, the 12-run preset two at a time, the report, and what comes back in $OUT."""
    work, out = tmp_path / "repo", tmp_path / "out"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".git", ".venv", "data", "outputs", "__pycache__"))
    (work / ".carry").mkdir()
    shutil.copy(CIFAR, work / ".carry")
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "DATA": str(tmp_path / "data"), "N_JOBS": "2",
           "TRAIN_EXTRA": "trainer.epochs=1 dataset=digits model=mlp trainer.num_threads=1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "scripts/gpu_session.sh", "baselines"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["baselines.log", "baselines.tar.gz",
                                                     "float_resnet20_cifar10.ckpt"]
    with tarfile.open(out / "baselines.tar.gz") as tar:
        names = tar.getnames()
        report = tar.extractfile("./baselines/report.md").read().decode()
    assert not [n for n in names if n.endswith(".ckpt")]
    assert sum(n.endswith("/summary.json") and n.startswith("./baselines/") for n in names) == 12
    assert "12 done, 0 failed, 0 unfinished" in report
    assert json.loads((work / "outputs/float/resnet20_cifar10/summary.json").read_text())["status"] == "done"
