"""One run on several processes (DistributedDataParallel, gloo on CPU): it completes, writes one
set of files, keeps the ranks' quantizer state identical, and matches a one-process run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra_utils import compose_config

from qnnrun.checkpoint import load_checkpoint
from qnnrun.engine import train
from qnnrun.evaluate import evaluate_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")

COMMON = ["trainer.device=cpu", "trainer.num_threads=1", "trainer.epochs=3"]


def _train(tmp_path: Path, name: str, *overrides: str) -> dict:
    return train(compose_config([*COMMON, *overrides], data_dir=tmp_path / "data"), tmp_path / name)


def test_two_processes_compute_what_one_process_computes(tmp_path: Path) -> None:
    """Without BatchNorm (whose statistics are per rank) the first epoch is the same computation
    split over two processes: same loss up to the summation order of the averaged gradients."""
    options = ("method=fp", "model.batch_norm=false")
    _train(tmp_path, "one", *options)
    _train(tmp_path, "two", *options, "trainer.devices=2")
    single, double = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    first_single, first_double = single["history"][0], double["history"][0]
    assert first_double["train_loss"] == pytest.approx(first_single["train_loss"], rel=1e-4)
    assert first_double["train_acc"] == pytest.approx(first_single["train_acc"], abs=0.5)
    assert abs(double["history"][-1]["test_acc"] - single["history"][-1]["test_acc"]) <= 1.0
    assert sum(h["train_samples"] for h in double["history"]) == 3 * 1437  # summed over ranks, once each


def test_recompute_quant_on_two_processes_is_the_same_run(tmp_path: Path) -> None:
    """DDP reduces the gradients that _ReplayedInput returns (PACT's clip levels included) like
    the plain path's: the same losses and weights."""
    options = ("method=pact", "bits=2", "trainer.devices=2", "trainer.deterministic=true", "trainer.epochs=2")
    plain = _train(tmp_path, "plain", *options)
    replayed = _train(tmp_path, "replayed", *options, "trainer.recompute_quant=true")
    for key in ("train_loss", "test_loss", "test_acc"):
        assert replayed[key] == plain[key], key
    a, b = load_checkpoint(tmp_path / "plain")["model"], load_checkpoint(tmp_path / "replayed")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))


def test_quantizers_started_from_the_first_batch_agree_on_every_rank(tmp_path: Path) -> None:
    """With quant.calib_batches=0 LSQ's steps start from the first training batch, of which each
    rank sees its half: rank 0's steps must reach every rank (the epoch-end agreement check fails
    the run otherwise)."""
    summary = _train(tmp_path, "two", "method=lsq", "bits=2", "quant.calib_batches=0", "trainer.devices=2",
                     "trainer.epochs=1")
    assert summary["status"] == "done" and summary["test_acc"] > 50


def test_sq_on_two_processes_keeps_the_ranks_identical(tmp_path: Path) -> None:
    """SQ redraws random float rows every step: the ranks must draw the same ones. The engine checks
    at every epoch end that the ranks' weights and buffers are identical, and fails if not."""
    single = _train(tmp_path, "one", "method=sq", "bits=2")
    double = _train(tmp_path, "two", "method=sq", "bits=2", "trainer.devices=2")
    assert double["status"] == "done" and double["epochs"] == 3
    # Same samples, order and global batch; BatchNorm statistics come from each rank's half batch.
    assert abs(double["test_acc"] - single["test_acc"]) <= 3.0
    ckpt = load_checkpoint(tmp_path / "two")
    assert ckpt["epoch"] == 3 and ckpt["config"]["trainer"]["devices"] == 2
    line = evaluate_checkpoint(str(tmp_path / "two"), None, compose_config(COMMON).paths, "cpu")
    assert f"top-1 {double['test_acc']:.2f}%" in line
    files = {p.name for p in (tmp_path / "two").iterdir()}
    assert {"last.ckpt", "best.ckpt", "summary.json", "bops.txt", "train.log"} <= files
    events = [{f for f in os.listdir(tmp_path / run) if f.startswith("events.out")} for run in ("one", "two")]
    assert len(events[0]) == len(events[1])  # rank 1 wrote no TensorBoard file of its own


def _agreement_worker(rank: int, port: int, differ: bool, results) -> None:
    from torch import distributed as dist, nn

    from qnnrun.distributed import Ranks, check_agreement
    from qnnrun.errors import QnnrunError

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(1.0 + (rank if differ else 0))
        layer.bias.zero_()
    try:
        check_agreement(layer, Ranks(rank, 2, rank), torch.device("cpu"))
        results.put((rank, "agree"))
    except QnnrunError as error:
        results.put((rank, str(error)))
    dist.destroy_process_group()


@pytest.mark.parametrize("differ", [False, True])
def test_agreement_check_catches_ranks_that_differ(differ: bool) -> None:
    from torch import multiprocessing as mp

    from qnnrun.distributed import _free_port

    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_agreement_worker, args=(_free_port(), differ, results), nprocs=2, start_method="spawn")
    outcomes = dict(results.get() for _ in range(2))
    if differ:
        assert all("ranks' models differ (first: weight)" in text for text in outcomes.values())
    else:
        assert outcomes == {0: "agree", 1: "agree"}


def _imagefolder_cfg(root: Path) -> Any:
    return compose_config(["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=8",
                           "dataset.batch_size=4", "dataset.num_workers=0", "dataset.skip_bad=true"]).dataset


def _bad_share_worker(rank: int, port: int, root: Path, results: Any) -> None:
    from datetime import timedelta

    from torch import distributed as dist

    from qnnrun.data import build_data

    # Ranks that disagree on the batches fail the test within a minute instead of gloo's 30 minutes.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    train = build_data(_imagefolder_cfg(root), data_dir=root, cache_dir=root / "cache", device="cpu", seed=0).train
    train.shard(rank, 2)
    results.put((rank, [len(labels) for _, labels in train]))
    dist.destroy_process_group()


def test_a_batch_whose_share_on_one_rank_is_all_bad_files_is_left_out_on_every_rank(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With dataset.skip_bad, rank 1's share of the first batch is unreadable: rank 1 had no batch there
    while rank 0 trained on it, and waited in the step's collectives for ever."""
    import numpy as np
    from PIL import Image
    from torch import multiprocessing as mp

    from qnnrun.data import build_data
    from qnnrun.distributed import _free_port

    for label in ("cat", "dog"):
        for split, count in (("train", 6), ("val", 2)):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(tmp_path / split / label / f"{i}.png")
    train = build_data(_imagefolder_cfg(tmp_path), data_dir=tmp_path, cache_dir=tmp_path / "cache", device="cpu",
                       seed=0).train
    train.shard(1, 2)
    train.skip_bad = False  # this look needs no process group
    dataset, read = train._loader.dataset, []
    get = type(dataset).__getitem__
    monkeypatch.setattr(type(dataset), "__getitem__", lambda self, i: read.append(i) or get(self, i))
    next(iter(train))  # rank 1's share of the first global batch: the files it reads
    for index in read:
        Path(dataset.samples[index][0]).write_bytes(b"not an image")
    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_bad_share_worker, args=(_free_port(), tmp_path, results), nprocs=2, start_method="spawn")
    sizes = dict(results.get() for _ in range(2))
    assert sizes == {0: [2, 2], 1: [2, 2]}  # 3 global batches of 4; the first left out on both


def test_bad_device_count_is_one_line(tmp_path: Path) -> None:
    from qnnrun.errors import QnnrunError

    with pytest.raises(QnnrunError, match="trainer.devices=0 is not valid"):
        _train(tmp_path, "run", "trainer.devices=0")


@pytest.mark.slow
def test_nbn_folds_batchnorm_identically_on_every_rank(tmp_path: Path) -> None:
    summary = _train(tmp_path, "two", "method=nbn", "bits=2", "trainer.devices=2")
    assert summary["status"] == "done"


def test_torchrun_ranks_write_one_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "QNNRUN_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "qnnrun.cli", "train", *COMMON, "trainer.epochs=2", "trainer.progress=false",
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["test_acc"] > 80
    assert load_checkpoint(run_dir)["config"]["trainer"]["devices"] == 1  # the ranks came from torchrun


@pytest.mark.slow
def test_sigterm_to_the_parent_stops_all_ranks_with_a_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "QNNRUN_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "qnnrun.cli", "train", *COMMON[:2], "trainer.devices=2", "trainer.epochs=300",
               "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 180
    while not (run_dir / "last.ckpt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err
    assert 1 <= load_checkpoint(run_dir)["epoch"] < 300
