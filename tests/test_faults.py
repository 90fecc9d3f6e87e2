"""Faults during a run: SIGINT/SIGTERM with a mid-epoch checkpoint and exact resume, kill -9 during
checkpoint writes, NaN losses (stop | skip_batch), unwritable output folders and full disks."""

from __future__ import annotations

import errno
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hydra_utils import compose_config

from qnnrun import checkpoint as checkpoint_module
from qnnrun import engine
from qnnrun.checkpoint import load_checkpoint
from qnnrun.data.loader import TensorLoader
from qnnrun.errors import Interrupted, QnnrunError
from qnnrun.runs import lock_run_dir

REPO = Path(__file__).resolve().parents[1]
# SQ draws random float rows every step from its own generator, and the MLP uses dropout: both
# random streams must be restored exactly for a mid-epoch resume to match.
RUN = ["method=sq", "bits=2", "model.dropout=0.2", "trainer.epochs=3", "trainer.deterministic=true",
       "trainer.num_threads=1"]
STEPS_PER_EPOCH = 23  # digits: 1437 training images in batches of 64


def _train(tmp_path: Path, name: str, *overrides: str) -> dict:
    return engine.train(compose_config([*RUN, *overrides], data_dir=tmp_path / "data"), tmp_path / name)


def _model_state(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_checkpoint(run / "last.ckpt")["model"].items() if isinstance(v, torch.Tensor)}


def _assert_same_run(a: Path, b: Path) -> None:
    summary_a, summary_b = (json.loads((run / "summary.json").read_text()) for run in (a, b))
    for key in ("test_acc", "test_loss", "train_loss", "train_acc", "best_test_acc"):
        assert summary_a[key] == summary_b[key], key
    state_a, state_b = _model_state(a), _model_state(b)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def test_signals_at_random_steps_resume_to_the_uninterrupted_result(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM/SIGINT delivered to the process at random training steps (and once during an
    evaluation): each stop writes last.ckpt and raises Interrupted; resume=true continues; the final
    metrics and weights equal an uninterrupted run's exactly (deterministic CPU)."""
    _train(tmp_path, "straight")
    total = 3 * STEPS_PER_EPOCH
    draw = random.Random(1234)
    # Mid-epoch points, the last batch of an epoch, and the last batch of the run (the run then
    # finishes normally: nothing is left to resume).
    targets = sorted({draw.randrange(total - 1) for _ in range(3)} | {STEPS_PER_EPOCH - 1, total - 1})
    pending = list(targets)
    original = engine.train_step

    def signalled_step(*args, **kwargs):
        result = original(*args, **kwargs)
        step = args[7]
        if pending and step == pending[0]:
            pending.pop(0)
            os.kill(os.getpid(), signal.SIGTERM if len(pending) % 2 else signal.SIGINT)
        return result

    monkeypatch.setattr(engine, "train_step", signalled_step)
    stops = []
    for attempt in range(len(targets) + 2):  # bounded: one run per stop, plus the last
        try:
            _train(tmp_path, "interrupted", *(["resume=true"] if attempt else []))
            break
        except Interrupted as stop:
            assert stop.signum in (signal.SIGTERM, signal.SIGINT)
            assert "resume=true" in str(stop) and "\n" not in str(stop)
            ckpt = load_checkpoint(tmp_path / "interrupted")
            stops.append((ckpt["epoch"], ckpt.get("partial", {}).get("batches")))
    assert not pending
    # The stop at the last batch of epoch 1 is saved as the end of that epoch, not as a partial one.
    assert (1, None) in stops and any(batches for _, batches in stops)
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(signal.getsignal(signal.SIGTERM))
    _assert_same_run(tmp_path / "straight", tmp_path / "interrupted")


def test_signal_during_evaluation_stops_at_the_epoch_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = engine.evaluate
    calls = []

    def signalled_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", signalled_evaluate)
    with pytest.raises(Interrupted, match="end of epoch 1"):
        _train(tmp_path, "run")
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["epoch"] == 1 and "partial" not in ckpt
    _train(tmp_path, "run", "resume=true")
    _train(tmp_path, "straight")
    _assert_same_run(tmp_path / "straight", tmp_path / "run")


def test_handlers_are_restored_after_a_run(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    _train(tmp_path, "run", "trainer.epochs=1")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_mid_epoch_checkpoint_refuses_another_batch_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = engine.train_step

    def signalled_step(*args, **kwargs):
        result = original(*args, **kwargs)
        if args[7] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(engine, "train_step", signalled_step)
    with pytest.raises(Interrupted):
        _train(tmp_path, "run")
    assert load_checkpoint(tmp_path / "run")["partial"]["batches"] == 6
    with pytest.raises(QnnrunError, match="its dataset.batch_size was 64, this run has 32"):
        _train(tmp_path, "run", "resume=true", "dataset.batch_size=32")


def test_sigterm_from_outside_exits_143_and_the_printed_command_continues_the_run(tmp_path: Path) -> None:
    """The real command under a scheduler's SIGTERM: one message line, exit 128 + 15, a loadable
    checkpoint, no summary; the line names the command that continues this run, and that command,
    run as printed, continues it in its own folder (not a fresh run in a new one)."""
    env = {**os.environ, "QNNRUN_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, "-m", "qnnrun.cli", "train", "model=lenet5", "trainer.epochs=12",
               "trainer.progress=false", "trainer.num_threads=1"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("outputs/*/*/last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith("qnnrun: stopped by SIGTERM at ") and "Traceback" not in err
    [run] = [p.parent for p in tmp_path.glob("outputs/*/*/last.ckpt")]
    assert 1 <= load_checkpoint(run)["epoch"] < 12
    assert not (run / "summary.json").exists()  # not reported as done, nor as failed
    assert "[WARNING] - stopped by SIGTERM at " in (run / "train.log").read_text()  # the log says how it ended
    printed = err.strip().splitlines()[-1].split("continue this run with ")[1].split(" (a sweep")[0]
    words = shlex.split(printed)
    assert words[:2] == ["qnnrun", "train"]
    resumed = subprocess.run([sys.executable, "-m", "qnnrun.cli", *words[1:]], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run / 'last.ckpt'}" in resumed.stdout + resumed.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "done" and load_checkpoint(run)["epoch"] == 12
    assert [p.parent for p in tmp_path.glob("outputs/*/*/summary.json")] == [run]  # no second folder


WRITER = textwrap.dedent("""
    import sys, torch
    from qnnrun.checkpoint import save_atomic
    path, start = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    for version in range(start, start + 100000):
        weights = torch.full((512, 1024), float(version))
        save_atomic({"format": 1, "epoch": version, "config": {}, "model": {"w": weights}}, path)
""")


def test_kill_9_during_checkpoint_writes_never_leaves_a_corrupt_file(tmp_path: Path) -> None:
    """A process saving 2 MiB checkpoints in a loop is killed with SIGKILL at random moments, several
    times: last.ckpt always loads and is one whole version; leftover temporary files are removed
    by the next training to lock the folder."""
    path = tmp_path / "last.ckpt"
    draw = random.Random(7)
    versions = []
    for round_ in range(6):  # bounded
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(round_ * 100000)],
                                  stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(draw.uniform(0.05, 0.4))
        writer.kill()
        writer.wait()
        if path.exists():
            ckpt = load_checkpoint(path)
            weights = ckpt["model"]["w"]
            assert weights.shape == (512, 1024) and bool((weights == ckpt["epoch"]).all())
            versions.append(ckpt["epoch"])
    assert versions, "no write finished before any kill: the test did not exercise anything"
    lock_run_dir(tmp_path).close()
    assert not list(tmp_path.glob(".*.tmp"))
    assert load_checkpoint(path)["epoch"] == versions[-1]


def _poison_batch(monkeypatch: pytest.MonkeyPatch, epoch: int, batch: int) -> None:
    """Make one training batch NaN (bad input data)."""
    original = TensorLoader.__iter__

    def poisoned(self):
        for index, (images, labels) in enumerate(original(self)):
            if self.shuffle and self.epoch == epoch and index == batch:
                images = torch.full_like(images, float("nan"))
            yield images, labels

    monkeypatch.setattr(TensorLoader, "__iter__", poisoned)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _poison_batch(monkeypatch, epoch=1, batch=4)
    with pytest.raises(QnnrunError) as error:
        _train(tmp_path, "run", "method=ste")
    message = str(error.value)
    assert "\n" not in message
    assert f"epoch 2, batch 5 (global step {STEPS_PER_EPOCH + 4})" in message
    assert "optim.lr" in message and "on_nan=skip_batch" in message
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in _model_state(tmp_path / "run").values() if v.is_floating_point())
    assert not (tmp_path / "run" / "summary.json").exists()


def test_nan_loss_with_skip_batch_skips_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _poison_batch(monkeypatch, epoch=1, batch=4)
    summary = _train(tmp_path, "run", "method=ste", "trainer.on_nan=skip_batch")
    assert summary["test_acc"] > 80
    history = load_checkpoint(tmp_path / "run")["history"]
    assert [h.get("skipped_batches", 0) for h in history] == [0, 1, 0]
    assert all(torch.isfinite(v).all() for v in _model_state(tmp_path / "run").values() if v.is_floating_point())


def test_bad_on_nan_value_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(QnnrunError, match="trainer.on_nan='ignore' is not valid: valid are stop, skip_batch"):
        _train(tmp_path, "run", "trainer.on_nan=ignore")


def test_output_folder_that_cannot_be_written_fails_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(QnnrunError, match=f"hydra.run.dir={blocker / 'run'} cannot be a folder: {blocker} is not"):
        _train(tmp_path, "a-file/run")


def test_disk_full_at_a_checkpoint_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = torch.save
    saves = []

    def full_disk(obj, f, *args, **kwargs):
        saves.append(obj.get("epoch"))
        if obj.get("epoch") == 2:
            f.write(b"partial bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(QnnrunError, match=r"could not write .*last.ckpt: No space left on device .*previous last.ckpt "
                                          r"is kept"):
        _train(tmp_path, "run", "method=ste")
    run = tmp_path / "run"
    assert load_checkpoint(run)["epoch"] == 1
    assert not list(run.glob(".*.tmp"))
    assert not (run / "summary.json").exists()
