"""The scripts: scripts/gpu_session.sh, the prepared GPU call (its shell and plans, and dry runs of its
plans on a CPU), the throughput benchmark's plan, and scripts/aqe_gap.py on saved aqe runs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

# The GPU runbook and the benchmarks, not the product: run with `python -m pytest -m slow`.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_session.sh"
CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_plans_each_row_once_and_tables_the_cold_compile() -> None:
    bench = load_script("bench_throughput")
    args = argparse.Namespace(models=["resnet20"], methods=["fp", "ste", "bnn"], bits=[2, 4], overrides=[],
                              compile=True, channels_last=False, bf16=False, recompute=False, unfused=False)
    rows = [(method, bits, variant.label()) for _, method, bits, variant, _ in bench.plan_rows(args)]
    # float once per variant (eager first: the reference), bnn once (W1A1 whatever --bits says)
    assert rows == [("fp", 32, "eager"), ("fp", 32, "compile"), ("ste", 2, "eager"), ("ste", 2, "compile"),
                    ("ste", 4, "eager"), ("ste", 4, "compile"), ("bnn", 2, "eager"), ("bnn", 2, "compile")]
    results = [bench.Result("resnet20", "fp", "W32A32", "eager", 100.0, ratio=1.0),
               bench.Result("resnet20", "ste", "W2A2", "compile", 90.0, compile_s=2.0, cold_compile_s=40.0, graphs=1,
                            ratio=0.9)]
    lines = bench.table(results, epoch=False, precompiled=True).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert head[-3:] == ["compile s", "cold compile s", "graphs"] and cells[-3:] == ["2.0", "40.0", "1"]
    assert "cold compile s" not in bench.table(results, epoch=False)


def test_bench_rounds_interleave_the_rows_and_keep_going_past_failing_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """--rounds 2: every row of the model is warmed up, then timed in turn, twice; a row whose
    warm-up fails, or whose step fails in the second round, is reported and the others are timed."""
    bench = load_script("bench_throughput")
    args = argparse.Namespace(models=["mlp"], methods=["fp", "ste"], bits=[2, 4], overrides=[], compile=False,
                              channels_last=False, bf16=True, recompute=False, unfused=False, batch=4, steps=2,
                              warmup=1, rounds=2, plan_epochs=2, compile_mode=None, epoch=False)
    planned = bench.plan_rows(args)
    assert [(m, b, v.label()) for _, m, b, v, _ in planned] == [
        ("fp", 32, "eager"), ("fp", 32, "eager+bf16"), ("ste", 2, "eager"), ("ste", 2, "eager+bf16"),
        ("ste", 4, "eager"), ("ste", 4, "eager+bf16")]
    warmed_up, timed = bench.warmed_up, []

    def failing_ste4(cfg, variant, device, args):  # noqa: ANN001, ANN202 - the patched function's signature
        if cfg.method.name == "ste" and cfg.bits.w == 4 and not variant.bf16:
            raise RuntimeError("compile error")
        trainer, seconds = warmed_up(cfg, variant, device, args)
        trainer.row = (cfg.method.name, int(cfg.bits.w), variant.label())
        return trainer, seconds

    def timed_steps(trainer, steps, device):  # noqa: ANN001, ANN202
        timed.append((trainer.row, steps))
        if trainer.row == ("ste", 2, "eager") and len(timed) > 5:
            raise RuntimeError("out of memory")
        return 0.5

    monkeypatch.setattr(bench, "warmed_up", failing_ste4)
    monkeypatch.setattr(bench, "timed_steps", timed_steps)
    out = list(bench.measured(planned, torch.device("cpu"), args, {}))
    assert [index for index, _ in out] == [4, 2, 0, 1, 3, 5]  # each failure as it happens, then the timed rows
    assert str(out[0][1]) == "compile error" and str(out[1][1]) == "out of memory"
    rows = [(r.method, r.bits, r.variant, r.images_per_s) for _, r in out[2:]]
    assert rows == [("fp", "W32A32", "eager", 8.0), ("fp", "W32A32", "eager+bf16", 8.0),
                    ("ste", "W2A2", "eager+bf16", 8.0), ("ste", "W4A4", "eager+bf16", 8.0)]  # 2 x 4 images in 1 s
    order = [row for row, _ in timed]
    assert len(order) == 10 and order[:5] == order[5:] and len(set(order)) == 5
    assert {steps for _, steps in timed} == {1}


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
    run, the preset's lsq and pact rows (METHODS) at 2 bits (SWEEP_EXTRA, not given to the float run) with
    and without the float run as the teacher (DISTILL), two at a time, the report, and what comes back."""
    work, out = tmp_path / "repo", tmp_path / "out"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".git", ".venv", "data", "outputs", "__pycache__"))
    (work / ".carry").mkdir()
    shutil.copy(CIFAR, work / ".carry")
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "DATA": str(tmp_path / "data"), "N_JOBS": "2",
           "METHODS": "lsq,pact", "DISTILL": "true", "SWEEP_EXTRA": "bits=2",
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
        summaries = [n for n in names if n.endswith("/summary.json") and n.startswith("./baselines/")]
        records = [json.load(tar.extractfile(n)) for n in summaries]
    assert not [n for n in names if n.endswith(".ckpt")]
    assert len(summaries) == 4 and sorted(r["method"] for r in records) == ["lsq", "lsq", "pact", "pact"], summaries
    assert {(r["bits_w"], r["bits_a"]) for r in records} == {(2, 2)}
    teachers = [(r["distill"] or {}).get("teacher") for r in records]
    float_run = str(work / "outputs/float/resnet20_cifar10")
    assert teachers.count(None) == 2 and teachers.count(float_run) == 2, teachers
    assert "4 done, 0 failed, 0 unfinished" in report
    assert json.loads((work / "outputs/float/resnet20_cifar10/summary.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_gpu_session_speed_dry_run_on_cpu(tmp_path: Path) -> None:
    """The speed plan end to end on a CPU with fp and ste at a tiny batch: every bench step writes its
    JSON, and the compiled rows of the precompiled steps carry their cold compile time."""
    work, out = tmp_path / "repo", tmp_path / "out"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".git", ".venv", "data", "outputs", "__pycache__"))
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu",
           "BENCH_EXTRA": "--batch 8 --steps 1 --warmup 1 --epoch-samples 64 --methods fp ste --threads 1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "scripts/gpu_session.sh", "speed"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["speed.log", "speed.tar.gz"]
    with tarfile.open(out / "speed.tar.gz") as tar:
        benches = {Path(n).stem: json.load(tar.extractfile(n)) for n in tar.getnames() if n.endswith(".json")}
    assert sorted(benches) == ["cudagraphs", "epochs", "methods", "recompute"]
    rows = {(r["method"], r["bits"], r["variant"]): r for r in benches["methods"]["rows"]}
    assert sorted(rows) == [("fp", "W32A32", "compile"), ("fp", "W32A32", "eager"), ("ste", "W2A2", "compile"),
                            ("ste", "W2A2", "eager")]
    for key, row in rows.items():
        compiled = key[2] == "compile"
        assert (row["cold_compile_s"] is not None) == compiled and (row["compile_s"] is not None) == compiled, row
        assert row["graphs"] == (1 if compiled else None), row
    epochs = benches["epochs"]["rows"]
    assert {(r["method"], r["bits"]) for r in epochs if r["variant"] == "compile"} == {
        ("fp", "W32A32"), ("ste", "W2A2"), ("ste", "W4A4")}
    assert all(r["epoch_images_per_s"] > 0 and r["cold_compile_s"] is not None for r in epochs
               if r["variant"] == "compile")
    assert {r["variant"] for r in benches["recompute"]["rows"]} == {"eager", "eager+recompute"}


def test_aqe_gap_measures_the_evaluated_and_the_trained_network(tmp_path: Path) -> None:
    """On saved aqe runs: 'h alone' is the network qnnrun evaluates (the model's output in evaluation
    mode), 'mixture' the one it trains (every AQE quantizer as in training, BatchNorm evaluating); the
    mixture is taken at the alpha of the last trained epoch, so a run whose alpha rose to 1 has no gap
    (every row the same, on one draw of training batches), and a constant-alpha run none at --alpha 1."""
    import torch

    from hydra_utils import compose_config
    from qnnrun.engine import train
    from qnnrun.evaluate import load_saved_run
    from qnnrun.quant.quantizers import AsymptoticQuantizer

    gap = load_script("aqe_gap")
    for name, extra in [("constant", []), ("rising", ["method.alpha_end=1.0"])]:
        train(compose_config(["method=aqe", "trainer.epochs=2", "trainer.num_threads=1", *extra],
                             data_dir=tmp_path / "data"), tmp_path / name)
    model = load_saved_run(tmp_path / "constant", torch.device("cpu")).model
    x = torch.randn(8, 64)
    with torch.no_grad():
        evaluated = model(x)
        assert torch.equal(gap.AsTrained(model, ()).eval()(x), evaluated)
        mixed = gap.AsTrained(model, ("weight_quant", "input_quant")).eval()(x)
        for quantizer in model.modules():
            if isinstance(quantizer, AsymptoticQuantizer):
                quantizer.train()
        assert torch.equal(mixed, model(x)) and not torch.equal(mixed, evaluated)

    data = str(tmp_path / "data")
    epochs, rising = gap.measure(str(tmp_path / "rising"), data, batches=5, alpha=None)
    assert epochs == 2
    assert [name for name, *_ in rising] == list(gap.NETWORKS)
    assert len({tuple(accs) for _, *accs in rising}) == 1, rising
    _, at_one = gap.measure(str(tmp_path / "constant"), data, batches=5, alpha=1.0)
    assert len({tuple(accs) for _, *accs in at_one}) == 1, at_one

    train(compose_config(["method=ste", "trainer.epochs=1", "trainer.num_threads=1"], data_dir=tmp_path / "data"),
          tmp_path / "ste")
    with pytest.raises(SystemExit, match="method=ste, expected an aqe run"):
        gap.measure(str(tmp_path / "ste"), data, batches=1, alpha=None)
