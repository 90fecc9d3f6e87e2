"""Real sweeps on digits through each launcher: failed jobs, interruption, resume, and the report."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra_utils import run_cli
from omegaconf import OmegaConf

from qnnrun import CONFIG_DIR, engine
from qnnrun.methods import METHODS
from qnnrun.sweep import job_folder_name, resume_sweep_args

# Tiny runs: an MLP whose one hidden-to-hidden layer is quantized, one thread, no progress bar.
# bits.w=9 is a job that fails.
TINY = ["method=ste", "bits=2", "model.widths=[32,32]", "trainer.num_threads=1", "trainer.progress=false"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def only_sweep(cwd: Path) -> Path:
    sweeps = [p.parent for p in (cwd / "outputs").rglob("multirun.yaml")]
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}


def check_report(sweep: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Run ``qnnrun report SWEEP``; its numbers must be the mean/std of the runs' summaries."""
    code, out, err = run_cli(["report", str(sweep)], sweep.parent, capsys, monkeypatch)
    assert code == 0, err
    done = [s for s in summaries(sweep).values() if s["status"] == "done"]
    rows = list(csv.DictReader(open(sweep / "report.csv")))
    row = next(r for r in rows if r["bits_w"] == "2")
    accs = [s["test_acc"] for s in done]
    assert int(row["runs"]) == len(done)
    assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(accs))
    if len(accs) > 1:
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(accs))
    assert float(row["gbops_mean"]) == pytest.approx(done[0]["gbops"])
    assert float(row["train_time_s_mean"]) == pytest.approx(statistics.fmean(s["train_time_s"] for s in done))
    failed = next(r for r in rows if r["bits_w"] == "9")
    assert failed["runs"] == "0" and int(failed["failed"]) >= 1
    report = (sweep / "report.md").read_text()
    assert "bits.w=9 is not a valid bit width" in report and "| ste    | mlp" in out
    for name in ("accuracy_vs_bits.png", "accuracy_vs_gbops.png", "test_accuracy_curves.png"):
        data = (sweep / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    return rows


def test_basic_sweep_survives_failure_and_interruption_then_resumes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    sweep_args = ["train", "-m", *TINY, "trainer.epochs=2", "bits.w=2,9", "seed=0,1"]
    # Interrupt the whole sweep (as Ctrl-C or a lost node would) right after job 1 saved epoch 1.
    real_save = engine.save_atomic

    def save_then_interrupt(state: dict, path: Path) -> None:
        real_save(state, path)
        if state["config"]["seed"] == 1 and state["epoch"] == 1 and Path(path).name == "last.ckpt":
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_atomic", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_cli(sweep_args, tmp_path, capsys, monkeypatch)
    monkeypatch.setattr(engine, "save_atomic", real_save)
    sweep = only_sweep(tmp_path)
    first, cut = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))[:2]
    assert json.loads((first / "summary.json").read_text())["status"] == "done"
    assert not (cut / "summary.json").exists() and torch.load(cut / "last.ckpt")["epoch"] == 1
    untouched = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file() and p.suffix != ".log"}
    code, out, _ = run_cli(["report", str(sweep), "--no-plots"], tmp_path, capsys, monkeypatch)
    assert code == 0 and f"{cut} " in out
    assert "no summary.json: interrupted or still running, at epoch 1 of 2 (test acc " in out

    code, _, err = run_cli([*sweep_args, "resume=true"], tmp_path, capsys, monkeypatch)
    assert f"continuing the sweep in {sweep.relative_to(tmp_path)}" in err
    assert only_sweep(tmp_path) == sweep  # the same folders, not a new timestamped sweep
    assert code == 1 and "2 job(s) of the sweep failed" in err
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.name in untouched} == untouched
    assert "resuming" in (cut / "train.log").read_text() and "at epoch 1 of 2" in (cut / "train.log").read_text()
    records = summaries(sweep)
    assert sorted(s["status"] for s in records.values()) == ["done", "done", "failed", "failed"]
    failed = next(s for s in records.values() if s["status"] == "failed")
    assert failed["error"].startswith("bits.w=9 is not a valid bit width") and "bits.w=9" in failed["overrides"]
    assert failed["config"]["bits"]["w"] == 9

    rows = check_report(sweep, capsys, monkeypatch)
    assert rows[0]["seeds"] in ("0 1", "1 0")


def test_joblib_sweep_records_a_failed_worker_job_and_resumes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The jobs run in joblib's worker processes; the sweep's own process is this one.
    args = ["train", "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", *TINY, "trainer.epochs=1",
            "bits.w=2,9"]
    code, out, err = run_cli(args, tmp_path, capsys, monkeypatch)
    assert code == 1 and "1 job(s) of the sweep failed" in err, err
    assert "Joblib.Parallel(n_jobs=2" in out + err
    sweep = only_sweep(tmp_path)
    # A job killed after its last checkpoint but before its summary: resume finishes it from last.ckpt.
    finished = sweep / "0_w2"  # named by the one setting its jobs set otherwise (bits.w=2,9)
    (finished / "summary.json").unlink()
    code, _, err = run_cli([*args, "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 1 and "1 job(s) of the sweep failed" in err, err
    assert only_sweep(tmp_path) == sweep
    assert "at epoch 1 of 1" in (finished / "train.log").read_text()
    assert sorted(s["status"] for s in summaries(sweep).values()) == ["done", "failed"]
    check_report(sweep, capsys, monkeypatch)


def test_a_refused_sweep_resume_leaves_the_finished_jobs_records_as_they_were(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra writes each job's .hydra/ before the job can refuse a changed config: the run's own
    config and overrides must be put back, or a report would read the refused values as the run's."""
    args = ["train", "-m", *TINY, "trainer.epochs=1", "seed=0,1", "hydra.sweep.dir=sweep"]
    code, _, err = run_cli(args, tmp_path, capsys, monkeypatch)
    assert code == 0, err
    sweep = tmp_path / "sweep"
    before = {p: p.read_bytes() for p in sorted(sweep.rglob(".hydra/*"))}
    code, _, err = run_cli([*args, "optim.lr=0.05", "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 1 and "its optim.lr was" in err, err
    assert {p: p.read_bytes() for p in sorted(sweep.rglob(".hydra/*"))} == before
    assert not list(sweep.rglob(".hydra.kept"))


def test_a_sweep_jobs_unexpected_error_is_recorded_with_its_type(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An error no check anticipated is recorded as "RuntimeError: boom", its type kept: the bare
    message alone would not say what went wrong."""
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "train", boom)
    code, _, err = run_cli(["train", "-m", *TINY, "trainer.epochs=1", "seed=0", "hydra.sweep.dir=sweep"], tmp_path,
                           capsys, monkeypatch)
    assert code == 1 and "1 job(s) of the sweep failed" in err, err
    [record] = summaries(tmp_path / "sweep").values()
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom"


def test_sigterm_stops_a_joblib_sweep_without_starting_its_queued_jobs(tmp_path: Path) -> None:
    """A scheduler's SIGTERM reaches the command and its joblib workers (one process group): each
    running job writes its checkpoint and its worker exits. Before, a worker took the sweep's next
    queued job and trained it on, orphaned, after the command had gone."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "qnnrun.cli", "train", "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
               *TINY, "trainer.epochs=5000", "method=ste,lsq,pact,dorefa", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "QNNRUN_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while len(list(sweep.glob("*/last.ckpt"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert len(list(sweep.glob("*/last.ckpt"))) == 2, process.communicate()[1]
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=120)  # also waits for the workers, which share its pipes
    assert process.returncode == 128 + signal.SIGTERM, err  # one line, not joblib's traceback and exit 1
    assert "Traceback" not in err and (
        "qnnrun: the sweep was stopped by SIGTERM: its running jobs write their checkpoints (their lines follow); "
        "continue it with its command plus resume=true") in err.splitlines()
    # the signal lands inside an epoch ("at epoch 3, batch 3 of 23") or between two ("at the end of epoch 3")
    assert len(re.findall(r"qnnrun: stopped by SIGTERM at (the end of )?epoch \d+", err)) == 2, err
    assert "leaked" not in err, err  # loky's resource tracker cleans the stopped workers' semaphores quietly
    deadline = time.monotonic() + 60
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(process.pid), "a worker outlived the command"
    started = sorted(p.name.split("_")[0] for p in sweep.iterdir() if (p / "train.log").exists())
    assert started == ["0", "1"], started  # ste and lsq ran; pact and dorefa never started
    assert not list(sweep.glob("*/summary.json"))  # stopped runs are unfinished, not failed


@pytest.mark.slow
def test_sigterm_to_the_sweeps_command_alone_stops_its_workers_and_a_resume_continues_their_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``kill PID`` or ``timeout`` may signal a local sweep's command alone: it exits at once, and its
    workers, which no signal reached, see it gone at their next step and stop as if by SIGTERM, with
    their checkpoints. Before, they trained on as orphans, and a resume failed their runs ("is being
    trained by process N")."""
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", *TINY, "trainer.epochs=30",
            "dataset.batch_size=256", "bits.w=2,3,4", "method=ste", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "QNNRUN_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "qnnrun.cli", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(list(sweep.glob("*/last.ckpt"))) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert len(list(sweep.glob("*/last.ckpt"))) == 2 and process.poll() is None
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)  # the workers share its pipes: closed once they have gone
    except BaseException:  # no worker left training beyond the test
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert len(re.findall(r"qnnrun: stopped by SIGTERM at (the end of )?epoch \d+", err)) == 2, err
    deadline = time.monotonic() + 60
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(process.pid), "a worker outlived the command"
    cut = sorted(p.parent for p in sweep.glob("*/last.ckpt"))
    assert len(cut) == 2 and not list(sweep.glob("*/summary.json"))
    assert all("has gone: stopping as if by SIGTERM" in (run / "train.log").read_text() for run in cut)
    assert sorted(p.name.split("_")[0] for p in sweep.iterdir() if (p / "train.log").exists()) == ["0", "1"]

    code, _, err = run_cli([*args, "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    runs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(runs) == 3 and set(cut) <= set(runs)  # the cut runs continued in their folders, the third ran
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["epochs"] == 30


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_submitit_local_two_job_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *TINY,
            "trainer.epochs=1", "bits.w=2,9"]
    code, _, err = run_cli(args, tmp_path, capsys, monkeypatch)
    assert code == 1 and "1 job(s) of the sweep failed" in err, err
    sweep = only_sweep(tmp_path)
    assert list(sweep.glob(".submitit/*"))  # the jobs really went through submitit
    check_report(sweep, capsys, monkeypatch)


def test_report_errors_and_single_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["report", "empty"], tmp_path, capsys, monkeypatch)
    assert code == 1 and err.strip() == ("qnnrun: error: no runs under empty: expected folders holding "
                                         "summary.json, last.ckpt or TensorBoard events (a run, a sweep "
                                         "folder or outputs/)")
    code, _, err = run_cli(["report", "missing"], tmp_path, capsys, monkeypatch)
    assert code == 1 and "missing does not exist" in err
    # Step curves make TensorBoard events in run/steps: part of the run, not a second (unfinished) run.
    code, _, err = run_cli(["train", *TINY, "trainer.epochs=1", "trainer.log_every_steps=5", "hydra.run.dir=run"],
                           tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert list((tmp_path / "run/steps").glob("events.out.tfevents.*"))
    code, out, err = run_cli(["report", "run", "--no-plots"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert f"{summary['test_acc']:.2f}" in out and "1 run under run: 1 done" in out
    code, out, _ = run_cli(["report", "--help"], tmp_path, capsys, monkeypatch)
    assert code == 0 and "PATH" in out and "report.csv" in out


def test_report_ignore_groups_runs_that_differ_in_a_given_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds that each fine-tune their own float run differ in init_from: one group each, unless
    ``--ignore init_from``; other differing keys still split groups."""
    runs = [(0, "float_s0", "0.01", 70.0), (1, "float_s1", "0.01", 72.0), (2, "float_s2", "0.01", 77.0),
            (0, "float_s0", "0.1", 60.0)]
    for seed, init, lr, acc in runs:
        folder = tmp_path / "runs" / f"{init}_{lr}"
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(
            f"- method=ste\n- seed={seed}\n- init_from=/x/{init}\n- optim.lr={lr}\n")
        (folder / "summary.json").write_text(json.dumps(
            {"status": "done", "method": "ste", "model": "mlp", "dataset": "digits", "bits_w": 2, "bits_a": 2,
             "epochs": 3, "seed": seed, "test_acc": acc, "best_test_acc": acc, "gbops": 1.0,
             "weight_memory_mb": 0.1, "compression": 10.0, "train_time_s": 1.0}))
    code, out, err = run_cli(["report", "runs", "--no-plots"], tmp_path, capsys, monkeypatch)
    assert code == 0 and "4 groups (runs that differ only in their seed)" in out, err
    assert "vs init_from" not in out and "init_from checkpoint" not in out  # no run recorded its start
    code, out, err = run_cli(["report", "runs", "--no-plots", "--ignore", "init_from"], tmp_path, capsys, monkeypatch)
    assert code == 0 and "2 groups (runs that differ only in their seed, init_from)" in out, err
    rows = {r["optim.lr"]: r for r in csv.DictReader(open(tmp_path / "runs" / "report.csv"))}
    assert "init_from" not in rows["0.01"]
    assert rows["0.01"]["runs"] == "3" and rows["0.01"]["seeds"] == "0 1 2"
    assert float(rows["0.01"]["test_acc_mean"]) == pytest.approx(73.0)
    assert float(rows["0.01"]["test_acc_std"]) == pytest.approx(statistics.stdev([70.0, 72.0, 77.0]))
    assert rows["0.1"]["runs"] == "1" and float(rows["0.1"]["test_acc_mean"]) == 60.0
    code, _, err = run_cli(["report", "runs", "--ignore", "init_form"], tmp_path, capsys, monkeypatch)
    assert code == 1 and err.strip() == ("qnnrun: error: --ignore init_form: no run sets it; the keys the runs "
                                         "set are init_from, optim.lr")


def test_report_shows_the_change_from_the_init_from_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs that record their starting net's accuracy (summary.json's init_test_acc) get the mean
    change from it, in points, in both tables and the CSV; a run without one counts for nothing."""
    runs = [("lsq", 4, 0, 86.5, 87.0), ("lsq", 4, 1, 86.9, 87.2), ("lsq", 2, 0, 84.0, 87.0),
            ("lsq", 2, 1, 83.0, None)]
    for method, bits, seed, acc, start in runs:
        folder = tmp_path / "runs" / f"{bits}_{seed}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(
            {"status": "done", "method": method, "model": "resnet20", "dataset": "cifar10", "bits_w": bits,
             "bits_a": bits, "epochs": 30, "seed": seed, "test_acc": acc, "best_test_acc": acc, "gbops": 1.0,
             "weight_memory_mb": 0.1, "compression": 10.0, "train_time_s": 1.0, "init_test_acc": start}))
    code, out, err = run_cli(["report", "runs", "--no-plots"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    rows = {r["bits_w"]: r for r in csv.DictReader(open(tmp_path / "runs" / "report.csv"))}
    assert float(rows["4"]["vs_init_mean"]) == pytest.approx(-0.4)
    assert float(rows["4"]["vs_init_std"]) == pytest.approx(statistics.stdev([-0.5, -0.3]))
    assert float(rows["2"]["vs_init_mean"]) == pytest.approx(-3.0) and rows["2"]["vs_init_std"] == ""
    assert "vs init_from" in out and "-0.40 ± 0.14" in out
    assert "83.50 ± 0.71 (n=2, -3.00)" in out and "86.70 ± 0.28 (n=2, -0.40)" in out
    assert "then the mean change (points) from the init_from checkpoint's accuracy" in out


def test_report_tabulates_accuracy_at_chosen_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``--epochs`` adds test accuracy at those epochs from the TensorBoard events: mean ± std over
    a group's seeds, train accuracy in brackets, ``-`` where no run reached the epoch; a resumed
    run's rewritten epochs count once; rows name model, data set and length where those differ.
    Bad lists are one-line errors naming the value."""
    from torch.utils.tensorboard import SummaryWriter

    def write_run(method: str, seed: int, points: list[tuple[int, float, float]], model: str = "mlp",
                  epochs: int = 2) -> None:
        folder = tmp_path / "runs" / f"{method}_{model}_{seed}"
        writer = SummaryWriter(str(folder))
        writer.add_scalar("test/acc", 10.0, 2)  # an epoch the run rewrote after resuming ...
        writer.close()
        # TensorBoard reads a folder's event files in name order: events.out.tfevents.<second>.<host>.<pid>.<n>.
        # Written in the same second by one process, a 10th file would sort before a 9th; a resumed run is a
        # later process (or second), so date the first file a second earlier, as it would be.
        (first,) = folder.glob("events.out.tfevents.*")
        stamp = first.name.split(".")[3]
        first.rename(first.with_name(first.name.replace(f".{stamp}.", f".{int(stamp) - 1}.", 1)))
        writer = SummaryWriter(str(folder), purge_step=1)  # ... from the start, as the engine does
        for epoch, test, train in points:
            writer.add_scalar("test/acc", test, epoch)
            writer.add_scalar("train/acc", train, epoch)
        writer.close()
        (folder / "summary.json").write_text(json.dumps(
            {"status": "done", "method": method, "model": model, "dataset": "digits", "bits_w": 2, "bits_a": 2,
             "epochs": epochs, "seed": seed, "test_acc": points[-1][1], "best_test_acc": points[-1][1],
             "gbops": 1.0, "weight_memory_mb": 0.1, "compression": 10.0, "train_time_s": 1.0}))

    def by_epoch_rows() -> dict[str, list[str]]:
        code, out, err = run_cli(["report", "runs", "--no-plots", "--epochs", "1,2,3"], tmp_path, capsys, monkeypatch)
        assert code == 0, err
        table = out.split("## By epoch")[1]
        return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
                for line in table.splitlines() if line.startswith("| ") and "W2A2" in line}

    write_run("ste", 0, [(1, 70.0, 60.0), (2, 80.0, 75.0)])
    write_run("ste", 1, [(1, 72.0, 62.0), (2, 84.0, 77.0)])
    write_run("lsq", 0, [(1, 65.0, 55.0)])
    assert by_epoch_rows() == {"ste W2A2": ["71.00 ± 1.41 (61.00)", "82.00 ± 2.83 (76.00)", "-"],
                               "lsq W2A2": ["65.00 (55.00)", "-", "-"]}
    # A run of another model and length: every row names its model, data set and epoch count.
    write_run("lsq", 0, [(1, 50.0, 40.0)], model="cnn", epochs=1)
    assert by_epoch_rows() == {"lsq W2A2 (cnn, digits) (1 ep)": ["50.00 (40.00)", "-", "-"],
                               "lsq W2A2 (mlp, digits) (2 ep)": ["65.00 (55.00)", "-", "-"],
                               "ste W2A2 (mlp, digits) (2 ep)": ["71.00 ± 1.41 (61.00)", "82.00 ± 2.83 (76.00)", "-"]}
    assert "By epoch" not in run_cli(["report", "runs", "--no-plots"], tmp_path, capsys, monkeypatch)[1]
    for bad in ("0,10", "1,x", ""):
        code, _, err = run_cli(["report", "runs", "--epochs", bad], tmp_path, capsys, monkeypatch)
        assert code != 0 and f"--epochs: {bad!r}: expected epoch numbers (from 1)" in err


def test_smoke_preset_sweeps_every_method(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_cli(["train", "experiment=smoke", "--cfg", "hydra"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    methods = next(line for line in out.splitlines() if line.strip().startswith("method:")).split(":")[1]
    assert "mode: MULTIRUN" in out
    missing = set(METHODS) - {m.strip() for m in methods.split(",")}
    assert not missing, f"add {sorted(missing)} to hydra.sweeper.params.method in conf/experiment/smoke.yaml"


def test_resume_finds_the_sweep_of_the_same_overrides_only(tmp_path: Path) -> None:
    for name, task in [("a", ["method=fp,ste", "seed=0,1"]), ("b", ["method=fp,ste", "seed=0,1,2"])]:
        (tmp_path / name).mkdir()
        OmegaConf.save({"hydra": {"overrides": {"task": task}}}, tmp_path / name / "multirun.yaml")
    found = resume_sweep_args(["-m", "seed=0,1", "method=fp, ste", "resume=true", "hydra/launcher=local"], tmp_path)
    assert found[-1] == f"hydra.sweep.dir='{tmp_path / 'a'}'"
    # Settings that do not change the runs (progress bar, threads) may differ from the sweep's command.
    quiet = ["-m", "seed=0,1", "method=fp,ste", "trainer.progress=false", "trainer.num_threads=1", "resume=true"]
    assert resume_sweep_args(quiet, tmp_path)[-1] == f"hydra.sweep.dir='{tmp_path / 'a'}'"
    assert resume_sweep_args(["-m", "method=fp,ste", "seed=0,1"], tmp_path)[-1] == "seed=0,1"  # no resume=true
    assert resume_sweep_args(["-m", "method=fp", "resume=true"], tmp_path)[-1] == "resume=true"  # no such sweep
    given = ["-m", "method=fp,ste", "seed=0,1", "resume=true", "hydra.sweep.dir=mine"]
    assert resume_sweep_args(given, tmp_path) == given


def test_resume_says_when_it_starts_a_new_sweep_also_for_a_preset_that_sweeps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """experiment=mp_search sweeps by itself (hydra.mode: MULTIRUN), without -m: the notice was missing."""
    for args in (["-m", "method=fp", "resume=true"], ["experiment=mp_search", "resume=true"]):
        resume_sweep_args(args, tmp_path)
        assert "resume=true: no earlier sweep of these overrides under" in capsys.readouterr().err, args
    resume_sweep_args(["method=fp", "resume=true"], tmp_path)  # a single run: its own notice, elsewhere
    assert capsys.readouterr().err == ""


def test_job_folders_are_named_by_what_tells_the_jobs_apart(tmp_path: Path) -> None:
    """The nbn_cifar10 preset's sweep (its sweeper params, seeds on the command line): a job's folder
    holds its method, bits and seed, not the preset, the thread count or the other settings every job shares."""
    params = OmegaConf.load(CONFIG_DIR / "experiment" / "nbn_cifar10.yaml").hydra.sweeper.params
    task = ["experiment=nbn_cifar10", "seed=0,1,2", "trainer.num_threads=1", "optim.lr=0.02", "resume=true"]
    OmegaConf.save({"hydra": {"sweeper": {"params": params}, "overrides": {"task": task}}}, tmp_path / "multirun.yaml")
    job = ["bits='3'", "experiment=nbn_cifar10", "method=ste", "seed=2", "trainer.num_threads=1", "optim.lr=0.02",
           "resume=true"]
    assert job_folder_name(17, job, tmp_path) == "17_ste_w3a3_seed2"
    # Without a sweep record nothing is known to be shared: every setting but the free ones, method first.
    assert job_folder_name(0, job, tmp_path / "elsewhere") == "0_ste_w3a3_seed2_nbn_cifar10_optim.lr-0.02"
    # init_from by its run folder's name; a sweep whose one job sets nothing apart still says what it is.
    OmegaConf.save({"hydra": {"overrides": {"task": ["method=lsq", "bits.w=2", "init_from=a/0_fp_seed0/last.ckpt,"
                                                     "a/1_fp_seed1/last.ckpt"]}}}, tmp_path / "multirun.yaml")
    assert job_folder_name(1, ["method=lsq", "bits.w=2", "init_from=a/1_fp_seed1/last.ckpt"],
                           tmp_path) == "1_init_from-1_fp_seed1"
    (tmp_path / "multirun.yaml").write_text("hydra: {overrides: {task: [seed=4]}}\n")
    assert job_folder_name(0, ["seed=4"], tmp_path) == "0_seed4"
    # A float job has no bits and a bnn job its own, as their runs record (fp_w2a2 said what fp never ran).
    (tmp_path / "multirun.yaml").write_text("hydra: {overrides: {task: ['method=fp,bnn,ste', 'bits=2,4']}}\n")
    assert [job_folder_name(n, [f"method={m}", f"bits={b}"], tmp_path)
            for n, (m, b) in enumerate((("fp", 2), ("bnn", 4), ("ste", 4)))] == ["0_fp", "1_bnn_w1a1", "2_ste_w4a4"]
    (tmp_path / "multirun.yaml").write_text("hydra: {overrides: {task: ['method=fp', 'bits=2,4']}}\n")
    assert job_folder_name(1, ["method=fp", "bits=4"], tmp_path) == "1_fp"
    # A number keeps its sign.
    (tmp_path / "multirun.yaml").write_text("hydra: {overrides: {task: ['optim.lr=-1,1']}}\n")
    assert job_folder_name(0, ["optim.lr=-1"], tmp_path) == "0_optim.lr--1"


def test_a_sweep_named_the_old_way_resumes_each_job_in_its_own_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep made before the readable names (``<n>_<every override>``), its job 1 cut off after its last
    checkpoint but before its summary: ``resume=true`` skips job 0 untouched and finishes job 1 in its
    old folder; no folder of the new names appears beside them."""
    sweep_args = ["train", "-m", *TINY, "trainer.epochs=1", "seed=0,1", "hydra.sweep.dir=sweep"]
    old_names = ["hydra.sweep.subdir=${hydra.job.num}_${hydra.job.override_dirname}"]
    code, _, err = run_cli([*sweep_args, *old_names], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    sweep = tmp_path / "sweep"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name[:2] for p in jobs] == ["0_", "1_"] and all("seed=" in p.name and "'" in p.name for p in jobs)
    (jobs[1] / "summary.json").unlink()
    untouched = {p.name: p.stat().st_mtime_ns for p in jobs[0].iterdir() if p.is_file() and p.suffix != ".log"}

    code, _, err = run_cli([*sweep_args, "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == jobs
    assert {p.name: p.stat().st_mtime_ns for p in jobs[0].iterdir() if p.name in untouched} == untouched
    assert "at epoch 1 of 1" in (jobs[1] / "train.log").read_text()
    assert [json.loads((job / "summary.json").read_text())["status"] for job in jobs] == ["done", "done"]
