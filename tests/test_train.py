"""Real short trainings on the embedded digits set: learning, resume, determinism, init_from, eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra_utils import compose_config, train_interrupted_then_resumed
from mid_run import MidRun
from omegaconf import OmegaConf

from qnnrun.build import init_test_acc
from qnnrun.checkpoint import load_checkpoint, save_atomic
from qnnrun.engine import train
from qnnrun.errors import QnnrunError
from qnnrun.evaluate import evaluate_checkpoint, reestimate_batchnorm
from qnnrun.methods import METHODS
from qnnrun.methods.ste import DirectSTE


def _train(tmp_path: Path, name: str, *overrides: str) -> dict:
    cfg = compose_config(list(overrides), data_dir=tmp_path / "data")
    return train(cfg, tmp_path / name)


def test_digits_float_learns(tmp_path: Path) -> None:
    summary = _train(tmp_path, "fp", "method=fp", "trainer.epochs=10")
    assert summary["test_acc"] >= 95.0
    assert summary["bits_w"] == 32 and summary["compression"] == pytest.approx(1.0)


def test_digits_w4a4_ste_learns_and_writes_its_outputs(tmp_path: Path) -> None:
    summary = _train(tmp_path, "ste", "method=ste", "bits=4", "trainer.epochs=10")
    assert summary["test_acc"] >= 90.0
    run = tmp_path / "ste"
    assert json.loads((run / "summary.json").read_text())["status"] == "done"
    assert {"last.ckpt", "best.ckpt", "bops.txt", "bops.csv"} <= {p.name for p in run.iterdir()}
    assert list(run.glob("events.out.tfevents.*"))
    assert summary["compression"] > 2.5 and summary["gbops"] > 0
    ckpt = load_checkpoint(run / "last.ckpt")
    assert ckpt["epoch"] == 10 and len(ckpt["history"]) == 10


def test_bits_32_is_float(tmp_path: Path) -> None:
    summary = _train(tmp_path, "b32", "method=ste", "bits=32", "trainer.epochs=1")
    assert (summary["bits_w"], summary["bits_a"]) == (32, 32)
    assert summary["compression"] == pytest.approx(1.0)


def test_separate_weight_and_activation_bits(tmp_path: Path) -> None:
    summary = _train(tmp_path, "w1a2", "bits.w=1", "bits.a=2", "trainer.epochs=1", "quant.last_layer=same")
    assert (summary["bits_w"], summary["bits_a"]) == (1, 2)
    ckpt = load_checkpoint(tmp_path / "w1a2" / "last.ckpt")
    last_weight = [v for k, v in ckpt["model"].items() if k.startswith("classifier") and k.endswith("weight")]
    assert last_weight  # the classifier exists under the expected name
    assert ckpt["config"]["bits"] == {"w": 1, "a": 2}


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    args = ("bits=2", "trainer.epochs=2", "trainer.deterministic=true")
    first = _train(tmp_path, "a", *args)
    second = _train(tmp_path, "b", *args)
    for key in ("test_acc", "test_loss", "train_loss", "train_acc"):
        assert first[key] == second[key]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["bits=3", "trainer.epochs=4", "trainer.deterministic=true", "model.dropout=0.2"]
    straight, resumed, stopped_at = train_interrupted_then_resumed(tmp_path, args, DirectSTE, 2, monkeypatch)
    assert stopped_at == 2
    for key in ("test_acc", "test_loss", "train_loss", "train_acc", "best_test_acc"):
        assert resumed[key] == straight[key], key
    a = load_checkpoint(tmp_path / "straight")["model"]
    b = load_checkpoint(tmp_path / "interrupted")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_resume_refuses_another_configuration(tmp_path: Path) -> None:
    _train(tmp_path, "run", "bits=2", "trainer.epochs=1")
    with pytest.raises(QnnrunError, match="bits"):
        _train(tmp_path, "run", "bits=3", "trainer.epochs=2", "resume=true")


def test_resume_names_the_changed_option_and_accepts_options_added_since(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _train(tmp_path, "run", "bits=2", "trainer.epochs=1")
    with pytest.raises(QnnrunError, match=r"its quant\.calib_batches was 4, this run has 2"):
        _train(tmp_path, "run", "bits=2", "trainer.epochs=2", "quant.calib_batches=2", "resume=true", "extend=true")
    # A checkpoint written before quant.bn_reestimate_batches existed.
    last = tmp_path / "run" / "last.ckpt"
    ckpt = load_checkpoint(last)
    del ckpt["config"]["quant"]["bn_reestimate_batches"]
    save_atomic(ckpt, last)
    summary = _train(tmp_path, "run", "bits=2", "trainer.epochs=2", "resume=true", "extend=true")
    assert summary["epochs"] == 2 and len(load_checkpoint(last)["history"]) == 2
    assert summary["extensions"] == [{"at_epoch": 1, "epochs_before": 1, "epochs": 2}]
    assert "predates the options quant.bn_reestimate_batches=0" in caplog.text


def test_init_from_float_checkpoint(tmp_path: Path) -> None:
    float_run = _train(tmp_path, "float", "method=fp", "trainer.epochs=8")
    assert float_run["init_test_acc"] is None
    summary = _train(tmp_path, "quant", "bits=8", "trainer.epochs=0", f"init_from={tmp_path / 'float' / 'last.ckpt'}")
    assert summary["test_acc"] >= 90.0  # 8-bit quantization of a trained net, before any QAT step
    # The summary keeps the starting net's accuracy (what quantization is measured against), and
    # TensorBoard's HParams view gets the change from it ...
    assert summary["init_test_acc"] == float_run["test_acc"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "quant")).Reload()
    [change] = events.Scalars("test/vs_init")
    assert change.value == pytest.approx(summary["test_acc"] - float_run["test_acc"])
    assert "test/vs_init" not in EventAccumulator(str(tmp_path / "float")).Reload().Tags()["scalars"]
    # ... only where the checkpoint's weights are the ones its last logged test accuracy measured.
    ckpt = load_checkpoint(tmp_path / "float" / "last.ckpt")
    save_atomic({**ckpt, "partial": {"batches": 3}}, tmp_path / "mid_epoch.ckpt")
    assert init_test_acc(str(tmp_path / "mid_epoch.ckpt")) is None
    assert init_test_acc(str(tmp_path / "moved.ckpt")) is None and init_test_acc(None) is None
    with pytest.raises(QnnrunError, match="does not fit"):
        _train(tmp_path, "bad", "model=lenet5", "trainer.epochs=0", f"init_from={tmp_path / 'float'}")


def test_eval_reproduces_the_final_test_accuracy(tmp_path: Path) -> None:
    summary = _train(tmp_path, "run", "bits=3", "trainer.epochs=2")
    cfg = compose_config([f"checkpoint={tmp_path / 'run'}"], config_name="eval", data_dir=tmp_path / "data")
    line = evaluate_checkpoint(cfg.checkpoint, cfg.get("dataset"), cfg.paths, cfg.device)
    assert f"top-1 {summary['test_acc']:.2f}%" in line


def test_config_is_saved_resolved(tmp_path: Path) -> None:
    _train(tmp_path, "run", "trainer.epochs=1", "optim=adam")
    config = OmegaConf.create(load_checkpoint(tmp_path / "run")["config"])
    assert config.optim.name == "adam" and config.method.name == "ste"


def test_conv_net_w2a2_ste_learns(tmp_path: Path) -> None:
    summary = _train(tmp_path, "lenet", "model=lenet5", "bits=2", "trainer.epochs=8")
    assert summary["test_acc"] >= 85.0


def test_bf16_autocast_training_learns(tmp_path: Path) -> None:
    summary = _train(tmp_path, "bf16", "bits=4", "trainer.epochs=3", "trainer.precision=bf16")
    assert summary["test_acc"] >= 85.0


BF16_CASES = [[method] for method in sorted(METHODS)] + [["bnn", "method.shift_bn=true"]]


@pytest.mark.parametrize("case", BF16_CASES, ids=" ".join)
def test_every_method_steps_under_bf16_autocast_and_keeps_its_state_fp32(case: list[str]) -> None:
    """``trainer.precision=bf16``: layer outputs, hence quantizer inputs, are bf16; the statistics a
    method keeps (activation ranges, ternary thresholds, BatchNorm running values) stay float32."""
    run = MidRun(*case, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    outputs: list[torch.dtype] = []
    for module in run.model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output.dtype))
    losses = [run.train_step()[0] for _ in range(2)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert outputs and set(outputs) == {torch.bfloat16}  # the layers did run in bf16
    assert run.dtypes() == run.built_dtypes and torch.bfloat16 not in run.built_dtypes.values()


@pytest.mark.parametrize("case", [["method=aqe", "bits=2"], ["method=bnn", "method.shift_bn=true"]], ids=" ".join)
def test_bf16_run_with_batchnorm_reestimation_ends(tmp_path: Path, case: list[str]) -> None:
    """The two states that crashed under bf16, end to end: aqe re-estimates BatchNorm (its ternary
    thresholds calibrating) before each evaluation; bnn's shift BatchNorm evaluates on its running values."""
    summary = _train(tmp_path, "run", *case, "trainer.epochs=1", "trainer.precision=bf16")
    assert summary["status"] == "done" and summary["test_acc"] > 10.0


@pytest.mark.slow
def test_compiled_run_reports_its_warm_up_apart(tmp_path: Path) -> None:
    """trainer.compile=true: the first step's compile time is in compile_s, not in the epoch time."""
    summary = _train(tmp_path, "compiled", "bits=2", "trainer.epochs=2", "trainer.compile=true")
    history = load_checkpoint(tmp_path / "compiled" / "last.ckpt")["history"]
    assert history[0]["compile_s"] > 0 and "compile_s" not in history[1]
    assert summary["compile_s"] == history[0]["compile_s"]
    assert summary["test_acc"] > 80


def _step_curve(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "steps"), size_guidance={"scalars": 0})
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_log_every_steps_writes_step_curves_that_survive_a_crash(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss, lr and LSQ's steps every 5 steps, in <run>/steps; after a crash mid-epoch and a
    resume from the last epoch's checkpoint, the epoch's replayed steps replace the lost ones."""
    from hydra_utils import Interrupt

    from qnnrun.methods.lsq import LearnedStepSize

    args = ["method=lsq", "bits=2", "trainer.epochs=2", "trainer.log_every_steps=5", "trainer.deterministic=true"]
    _train(tmp_path, "straight", *args)
    steps_per_epoch = math.ceil(load_checkpoint(tmp_path / "straight")["history"][0]["train_samples"] / 64)
    straight = _step_curve(tmp_path / "straight", "train_step/loss")
    assert [s for s, _ in straight] == list(range(5, 2 * steps_per_epoch + 1, 5))
    lsq_step = _step_curve(tmp_path / "straight", "train_step/quant/lsq/step/classifier/weight")
    assert [s for s, _ in lsq_step] == [s for s, _ in straight]
    assert len({v for _, v in lsq_step}) > 1  # the learned step moves within the run

    original = LearnedStepSize.before_step

    def crash(self, model, step: int) -> None:  # noqa: ANN001 - the method's hook signature
        if step == steps_per_epoch + 12:
            raise Interrupt
        original(self, model, step)

    with monkeypatch.context() as patch:
        patch.setattr(LearnedStepSize, "before_step", crash)
        with pytest.raises(Interrupt):
            _train(tmp_path, "crashed", *args)
    # Logged past the end-of-epoch-1 checkpoint the resume starts from: stale once it resumes.
    assert max(s for s, _ in _step_curve(tmp_path / "crashed", "train_step/loss")) > steps_per_epoch + 5
    _train(tmp_path, "crashed", *args, "resume=true")
    assert _step_curve(tmp_path / "crashed", "train_step/loss") == straight


def test_reestimate_batchnorm_averages_the_evaluated_network_exactly() -> None:
    """Running statistics become the plain average over the batches of each BatchNorm's input in
    the network as it evaluates: dropout off, BatchNorm normalising with the batch's statistics."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Dropout(0.5),
                                torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2, momentum=0.3)).train()
    batches = [(torch.randn(8, 4) * (i + 1), torch.zeros(8)) for i in range(3)]
    assert reestimate_batchnorm(model, batches) == 2
    lin1, bn1, _, lin2, bn2 = model
    with torch.no_grad():
        first = [lin1(x) for x, _ in batches]
        second = [lin2((h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn1.eps) * bn1.weight + bn1.bias)
                  for h in first]
        for bn, inputs in ((bn1, first), (bn2, second)):
            torch.testing.assert_close(bn.running_mean, torch.stack([h.mean(0) for h in inputs]).mean(0))
            torch.testing.assert_close(bn.running_var, torch.stack([h.var(0) for h in inputs]).mean(0))
            assert int(bn.num_batches_tracked) == 3
    assert model.training and bn1.momentum == 0.1 and bn2.momentum == 0.3  # restored


def test_sq_evaluates_with_batchnorm_statistics_of_the_quantized_network(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SQ at r = 0.5 trains with half the rows float; before each evaluation the BatchNorm statistics
    are recomputed on the fully quantized network, and the saved run evaluates to the logged accuracy."""
    import qnnrun.engine as engine

    calls: list[int] = []

    def spy(model: torch.nn.Module, batches: object, *args: object) -> int:
        batches = list(batches)
        calls.append(len(batches))
        return reestimate_batchnorm(model, batches, *args)

    monkeypatch.setattr(engine, "reestimate_batchnorm", spy)
    overrides = ["method=sq", "bits.w=2", "bits.a=32", "method.ratios=[0.5]", "trainer.epochs=2",
                 "quant.bn_reestimate_batches=5"]
    summary = _train(tmp_path, "sq", *overrides)
    assert calls == [5, 5]  # one re-estimation per evaluation
    cfg = compose_config([f"checkpoint={tmp_path / 'sq'}"], config_name="eval", data_dir=tmp_path / "data")
    line = evaluate_checkpoint(cfg.checkpoint, cfg.get("dataset"), cfg.paths, cfg.device)
    assert f"top-1 {summary['test_acc']:.2f}%" in line
    calls.clear()
    _train(tmp_path, "off", *overrides[:-1], "quant.bn_reestimate_batches=0")
    assert calls == []
    _train(tmp_path, "start", *overrides[:-2], "trainer.epochs=0", "quant.bn_reestimate_batches=3")
    assert calls == [3]  # trainer.epochs=0 evaluates its starting point the same way


def test_calibration_and_batchnorm_reestimation_read_only_the_batches_they_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qnnrun.data.loader import TensorLoader

    read = []
    original = TensorLoader.__iter__

    def counting(self: TensorLoader):
        for batch in original(self):
            read.append(self.shuffle)  # the training loader shuffles, the test loader does not
            yield batch

    monkeypatch.setattr(TensorLoader, "__iter__", counting)
    _train(tmp_path, "run", "method=sq", "bits.w=2", "bits.a=32", "trainer.epochs=0", "quant.calib_batches=2",
           "quant.bn_reestimate_batches=3")
    assert read.count(True) == 2 + 3  # each read one batch more before (with its augmentation draws)
