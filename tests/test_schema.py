"""The typed schemas of ``trainer``, ``quant`` and ``dataset``, and saved configs of older versions read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra_utils import compose_config, run_cli
from omegaconf import OmegaConf

from qnnrun.checkpoint import load_checkpoint, save_atomic
from qnnrun.config import method_options
from qnnrun.engine import train
from qnnrun.errors import QnnrunError
from qnnrun.evaluate import evaluate_checkpoint
from qnnrun.runs import CLAIMS
from qnnrun.schema import ABSENT_METHOD_OPTIONS, QuantConf, TrainerConf, saved_config
from qnnrun.sweep import kept_duplicate


def test_the_composed_trainer_and_quant_are_the_schemas_defaults(tmp_path: Path) -> None:
    cfg = compose_config([], data_dir=tmp_path)
    trainer = OmegaConf.to_container(cfg.trainer)
    trainer["progress"] = True  # compose_config turns the bar off for tests
    assert trainer == OmegaConf.to_container(OmegaConf.structured(TrainerConf))
    assert OmegaConf.to_container(cfg.quant) == OmegaConf.to_container(OmegaConf.structured(QuantConf))
    # A method's config sets its own quant defaults over the schema's, typed all the same.
    nbn = compose_config(["method=nbn"], data_dir=tmp_path).quant
    assert (nbn.init, nbn.fold_bn, nbn.per_channel) == ("mmse", True, False)
    assert OmegaConf.get_type(nbn) is QuantConf


def test_absent_method_options_name_real_options() -> None:
    for method, options in ABSENT_METHOD_OPTIONS.items():
        assert set(options) <= set(method_options(method)), method


def test_a_saved_config_of_an_older_version_gets_every_option_and_keeps_its_own_values() -> None:
    saved = {
        "seed": 3,
        "trainer": {"epochs": 7, "device": "cpu", "compile": False, "retired_option": 1},
        "quant": {"first_layer": 8, "calib_batches": 2},
        "method": {"name": "nbn", "group_size": "layer"},
    }
    cfg = saved_config(saved)
    assert (cfg.trainer.epochs, cfg.trainer.device, cfg.seed) == (7, "cpu", 3)  # its own values
    assert cfg.trainer.distill.teacher is None and cfg.trainer.on_nan == "stop"  # added since: the defaults
    quant = cfg.quant
    assert (quant.first_layer, quant.calib_batches, quant.init, quant.layer_bits) == (8, 2, "maxabs", None)
    assert "retired_option" not in cfg.trainer
    # A method option added since means what that version did, not today's default (nbn: 0.1).
    assert cfg.method.group_size == "layer" and cfg.method.quant_lr_scale == 1.0
    assert compose_config(["method=nbn"]).method.quant_lr_scale == 0.1
    # A data set's options by its kind: a CIFAR-10 config from before skip_bad existed.
    cifar = OmegaConf.to_container(compose_config(["dataset=cifar10"]).dataset)
    del cifar["skip_bad"]
    old = saved_config({"dataset": {**cifar, "batch_size": 50}}).dataset
    assert (old.skip_bad, old.batch_size, old.crop_padding) == (False, 50, 4)
    # Likewise an optimizer's and a schedule's, by name.
    sched = saved_config({"optim": {"name": "adam", "lr": 0.01}, "sched": {"name": "cosine"}})
    assert (sched.optim.lr, list(sched.optim.betas), sched.sched.warmup_epochs) == (0.01, [0.9, 0.999], 0.0)
    # Half a distill node (a config edited by hand) is completed too; the result is editable.
    partial = saved_config({"trainer": {"distill": {"teacher": "t.ckpt"}}})
    assert (partial.trainer.distill.teacher, partial.trainer.distill.weight) == ("t.ckpt", 1.0)
    partial.trainer.new_key = 1
    assert saved_config(OmegaConf.create(saved)) == cfg
    # trainer.distill=null meant "off" before the schema; a value no option can hold is one line.
    assert saved_config({"trainer": {"distill": None}}).trainer.distill.teacher is None
    with pytest.raises(QnnrunError, match=r"^the saved config's trainer.epochs='many' cannot be read by this "
                                          r"version of qnnrun: Value 'many' of type 'str' could not be converted"):
        saved_config({"trainer": {"epochs": "many"}})


def test_a_checkpoint_of_an_older_version_evaluates(tmp_path: Path) -> None:
    cfg = compose_config(["method=lsq", "bits=3", "trainer.epochs=1"], data_dir=tmp_path / "data")
    summary = train(cfg, tmp_path / "run")
    last = tmp_path / "run" / "last.ckpt"
    ckpt = load_checkpoint(last)
    for node, keys in (("trainer", ("distill", "on_nan", "log_every_steps", "recompute_quant")),
                       ("quant", ("init", "fold_bn", "layer_bits", "bn_reestimate_batches")),
                       ("method", ("min_step_ratio", "act_init", "learned_offset"))):
        for key in keys:
            del ckpt["config"][node][key]
    save_atomic(ckpt, last)
    line = evaluate_checkpoint(str(last), None, cfg.paths, "cpu")
    assert f"{summary['test_acc']:.2f}%" in line


def test_resume_true_of_an_older_run_keeps_its_method_options(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = ["method=nbn", "bits=3", "trainer.epochs=2", "model.widths=[16]"]
    train(compose_config(args, data_dir=tmp_path / "data"), tmp_path / "run")
    last = tmp_path / "run" / "last.ckpt"
    ckpt = load_checkpoint(last)
    del ckpt["config"]["method"]["quant_lr_scale"]  # written before the option existed: the run used 1.0
    ckpt["epoch"], ckpt["history"] = 1, ckpt["history"][:1]  # and cut after its first epoch
    save_atomic(ckpt, last)
    (tmp_path / "run" / "summary.json").unlink()
    cfg = compose_config([*args, "resume=true"], data_dir=tmp_path / "data")
    assert cfg.method.quant_lr_scale == 0.1  # today's default
    train(cfg, tmp_path / "run")
    assert load_checkpoint(last)["config"]["method"]["quant_lr_scale"] == 1.0
    assert "predates the options method.quant_lr_scale=1.0" in caplog.text


def test_a_resumed_sweep_keeps_its_duplicate_records_when_the_run_identities_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["train", "-m", "method=fp", "bits=2,4", "trainer.epochs=1", "trainer.progress=false",
            "hydra.sweep.dir=sweep"]
    code, _, err = run_cli(args, tmp_path, capsys, monkeypatch)
    assert code == 0, err
    duplicate = tmp_path / "sweep" / "1_fp_trainer.epochs-1"  # fp runs no bits: nothing else tells the jobs apart
    assert json.loads((duplicate / "summary.json").read_text())["status"] == "duplicate"
    # A newer version writes the configs otherwise (sched.warmup_epochs 0 -> 0.0): other identities.
    shutil.rmtree(tmp_path / "sweep" / CLAIMS)
    code, _, err = run_cli([*args, "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    record = json.loads((duplicate / "summary.json").read_text())
    assert record["status"] == "duplicate" and not (duplicate / "last.ckpt").exists()
    # A duplicate whose earlier run no longer is this job's run claims it again and trains.
    first = tmp_path / "sweep" / "0_fp_trainer.epochs-1" / "last.ckpt"
    ckpt = load_checkpoint(first)
    ckpt["config"]["optim"]["lr"] = 0.5
    save_atomic(ckpt, first)
    assert kept_duplicate(compose_config(["method=fp", "bits=4", "trainer.epochs=1"]), duplicate) is None


@pytest.mark.parametrize(("args", "expected"), [
    (["trainer.epochs=abc"], "trainer.epochs='abc' is not valid: expected an integer"),
    (["-m", "trainer.epochs=1,abc"], "trainer.epochs='abc' is not valid: expected an integer"),  # every sweep value
    (["-m", "trainer.compile=false,1"], "trainer.compile=1 is not valid: valid are true, false"),
    (["trainer.distill.weight=null"], "trainer.distill.weight=null is not valid: expected a number"),
    (["quant.calib_batches=1.5"], "quant.calib_batches=1.5 is not valid: expected an integer"),
    (["trainer.epochs=true"], "trainer.epochs=true is not valid: expected an integer"),
    (["trainer.device=null"], "trainer.device=null is not valid: expected text"),
    (["sched=step", "sched.milestones=30"], "sched.milestones=30 is not valid: expected a list in brackets, "
                                            "[a, b, ...]"),
    (["dataset=cifar10", "dataset.skip_bad=maybe"], "dataset.skip_bad='maybe' is not valid: valid are true, false"),
    # digits has no skip_bad (it reads no files): an option of another data set is no option here.
    (["dataset.skip_bad=true"], "dataset.skip_bad=true: no such option; did you mean dataset.std? "
                                "(qnnrun train --cfg job lists the options)"),
])
def test_a_value_its_option_type_cannot_hold_is_one_line_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        args: list[str], expected: str) -> None:
    code, _, err = run_cli(["train", *args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"],
                           tmp_path, capsys, monkeypatch)
    assert code == 1 and err == f"qnnrun: error: {expected}\n"
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
