"""Do several runs sharing one GPU finish sooner than the same runs one after the other?

Runs the same sweep (``--runs`` seeds of one config, ResNet-20 on CIFAR-10 by default) twice through
``qnnrun train -m``: with the basic launcher (in a row) and with ``hydra/launcher=local`` (joblib,
``--runs`` processes at once on the same GPU), and prints both wall-clock times::

    python scripts/bench_sweep_parallel.py --data-dir data --epochs 3
    python scripts/bench_sweep_parallel.py --data-dir data --epochs 3 --overrides method=ste bits=2

The wall time includes each process's start-up and data loading, as a user's sweep does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_sweep(args: argparse.Namespace, folder: Path, parallel: bool) -> float:
    """Wall-clock seconds of one ``qnnrun train -m`` sweep into ``folder``."""
    seeds = ",".join(str(seed) for seed in range(args.runs))
    launcher = ["hydra/launcher=local", f"hydra.launcher.n_jobs={args.runs}"] if parallel else []
    command = ["qnnrun", "train", "-m", *launcher, f"model={args.model}", f"dataset={args.dataset}",
               f"paths.data_dir={args.data_dir}", f"trainer.epochs={args.epochs}", "trainer.progress=false",
               f"trainer.device={args.device}", f"seed={seeds}", f"hydra.sweep.dir={folder}", *args.overrides]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def train_times(folder: Path) -> list[float]:
    return [json.loads(p.read_text())["train_time_s"] for p in sorted(folder.rglob("summary.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder holding cifar10-jpg/ (see the README)")
    parser.add_argument("--runs", type=int, default=4, help="runs in the sweep, all at once when parallel")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra qnnrun overrides, e.g. method=ste bits=4")
    args = parser.parse_args()
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        sequential = run_sweep(args, Path(tmp) / "sequential", parallel=False)
        parallel = run_sweep(args, Path(tmp) / "parallel", parallel=True)
        per_run_seq = statistics.fmean(train_times(Path(tmp) / "sequential"))
        per_run_par = statistics.fmean(train_times(Path(tmp) / "parallel"))
    print(f"\n{args.runs} x {args.model} on {args.dataset}, {args.epochs} epochs, {' '.join(args.overrides)} "
          f"({device})")
    print("| launcher | wall s | mean train s per run |")
    print("|---|---:|---:|")
    print(f"| basic (in a row) | {sequential:.1f} | {per_run_seq:.1f} |")
    print(f"| local, n_jobs={args.runs} (at once) | {parallel:.1f} | {per_run_par:.1f} |")
    print(f"speed-up of the sweep: {sequential / parallel:.2f}x")


if __name__ == "__main__":
    main()
