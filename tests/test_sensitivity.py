"""``qnnrun sensitivity``: each layer of a float MLP on digits quantized alone (weights, inputs, both),
the table, CSV and PNG it writes, the greedy ``quant.layer_bits`` proposal, and its one-line errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_utils import compose_config, run_cli
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from qnnrun.data import DataInfo
from qnnrun.engine import train
from qnnrun.errors import QnnrunError
from qnnrun.methods import METHODS
from qnnrun.models import build_model
from qnnrun.quant.fold import batchnorm_pairs, fold_batchnorm
from qnnrun.schema import saved_config
from qnnrun.sensitivity import (CSV_FIELDS, CSV_FILE, MODES, PNG_FILE, SIGNATURE, TEXT_FILE, UNSUITED_METHODS, Bench,
                                Sensitivity, check_options, check_output, gbops_rounded_up, layer_bits_override,
                                propose_widths, relative_error, run_sensitivity)

LAYERS = ("features.1", "features.4", "classifier")  # the default MLP, forward order
BUDGET = 0.004  # GBOPs per image: between every layer at 2 bits (0.0016) and at 8 bits (0.0074)


@pytest.fixture(scope="module")
def float_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float MLP trained 2 epochs on digits (about 97.8% test accuracy), evaluated in test batches of 100."""
    root = tmp_path_factory.mktemp("sensitivity")
    train(compose_config(["method=fp", "trainer.epochs=2", "dataset.eval_batch_size=100"], data_dir=root / "data"),
          root / "fp")
    return root / "fp"


def _config(run: Path, *overrides: str) -> DictConfig:
    return compose_config([f"checkpoint={run}", *overrides], config_name="sensitivity", data_dir=run.parent / "data")


@pytest.fixture(scope="module")
def measured(float_run: Path) -> dict[int, Sensitivity]:
    """The measurements at 2, 4 and 8 bits (method=ste), by width."""
    cfg, out = _config(float_run), {}
    for bits in (2, 4, 8):
        cfg.bits.w = cfg.bits.a = bits  # what bits=B sets
        out[bits] = run_sensitivity(cfg, check_options(cfg))[0]
    return out


def test_every_layer_is_measured_in_three_modes_at_the_widths_it_runs(measured: dict[int, Sensitivity]) -> None:
    result = measured[2]
    assert result.layers == LAYERS and result.images == 360 and result.calib_batches == 4
    assert [(row.layer, row.mode) for row in result.rows] == [(layer, mode) for layer in LAYERS for mode in MODES]
    widths = {(row.layer, row.mode): (row.weight_bits, row.input_bits) for row in result.rows}
    assert widths == {("features.1", "weights"): (2, 32), ("features.1", "inputs"): (32, 8),  # the image input
                      ("features.1", "both"): (2, 8), ("features.4", "weights"): (2, 32),
                      ("features.4", "inputs"): (32, 2), ("features.4", "both"): (2, 2),
                      ("classifier", "weights"): (2, 32), ("classifier", "inputs"): (32, 2),
                      ("classifier", "both"): (2, 2)}
    for row in result.rows:  # an error exactly where that side is quantized; the drop from the same baseline
        assert (row.weight_error is not None) == (row.mode != "inputs")
        assert (row.input_error is not None) == (row.mode != "weights")
        assert row.drop == pytest.approx(result.baseline_acc - row.acc)


def test_the_baseline_is_the_checkpoint_as_it_evaluated(float_run: Path, measured: dict[int, Sensitivity]) -> None:
    summary = json.loads((float_run / "summary.json").read_text())
    assert all(result.baseline_acc == pytest.approx(summary["test_acc"]) for result in measured.values())


def test_at_8_bits_nothing_is_lost_and_fewer_bits_err_more(measured: dict[int, Sensitivity]) -> None:
    for row in measured[8].rows:
        assert abs(row.drop) <= 1.0, row
        assert all(error < 1e-3 for error in (row.weight_error, row.input_error) if error is not None), row
    for low, high in ((2, 4), (4, 8)):
        for coarse, fine in zip(measured[low].rows, measured[high].rows, strict=True):
            assert coarse.weight_error is None or coarse.weight_error > fine.weight_error, (coarse, fine)
            if coarse.input_bits == fine.input_bits:  # the image input: 8 bits at any width
                assert coarse.input_error == fine.input_error
            else:
                assert coarse.input_error is None or coarse.input_error > fine.input_error, (coarse, fine)


def test_the_command_prints_the_table_writes_its_files_and_a_proposal_bops_agrees_with(
        float_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = tmp_path / "sens"
    code, out, err = run_cli(["sensitivity", f"checkpoint={float_run}", "bits=2", f"budget_gbops={BUDGET}",
                              f"output={out_dir}"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    table = [line for line in out.splitlines() if line.split()[:1] and line.split()[0] in LAYERS]
    assert [tuple(line.split()[:2]) for line in table] == [(layer, mode) for layer in LAYERS for mode in MODES]
    assert (out_dir / TEXT_FILE).read_text().startswith(SIGNATURE)
    with (out_dir / CSV_FILE).open() as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == CSV_FIELDS and len(rows) == 9
    png = (out_dir / PNG_FILE).read_bytes()
    assert png.startswith(b"\x89PNG") and b"Software\x00" + SIGNATURE.encode() in png
    check_output(out_dir)  # its own files: a second run may replace them

    override = re.search(r"'(quant\.layer_bits=\{.*\})'", out)[1]
    gbops = float(re.search(r"proposal under budget_gbops=\S+ ([\d.]+) GBOPs per image", out)[1])
    assert 0 < gbops <= BUDGET
    code, bops_out, err = run_cli(["bops", "method=ste", override], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    total = next(line for line in bops_out.splitlines() if line.startswith("total"))
    assert float(total.split()[2]) == gbops  # the GBOPs column, printed to 4 decimals by both


def test_the_proposal_is_under_the_budget_and_lowers_the_cheapest_layers_first(float_run: Path) -> None:
    cfg = _config(float_run, "bits=2", f"budget_gbops={BUDGET}")
    result, proposal = run_sensitivity(cfg, check_options(cfg))
    assert proposal.low_bops / 1e9 < proposal.budget_gbops == BUDGET < proposal.high_bops / 1e9
    assert proposal.bops / 1e9 <= BUDGET and list(proposal.widths) == list(LAYERS)
    assert set(proposal.widths.values()) <= {2, 8} and 2 in proposal.widths.values()


def test_a_batchnorm_folded_checkpoint_is_measured_as_it_evaluates(float_run: Path, tmp_path: Path) -> None:
    """The float run with its BatchNorms folded into biases (what nbn/fbf/lbl and ``quant.fold_bn``
    checkpoints hold) has the same baseline: the folded shifts are not dropped (they were: 10 points
    lower on a digits nbn run)."""
    ckpt = torch.load(float_run / "last.ckpt", weights_only=True)
    info = DataInfo(**ckpt["info"])
    model = build_model(saved_config(ckpt["config"]).model, in_channels=info.in_channels,
                        num_classes=info.num_classes, image_size=info.image_size)
    model.load_state_dict(ckpt["model"])
    example = torch.zeros(2, info.in_channels, info.image_size, info.image_size)
    fold_batchnorm(model, batchnorm_pairs(model, example))
    ckpt["model"] = model.state_dict()
    torch.save(ckpt, tmp_path / "last.ckpt")
    cfg = _config(tmp_path, "bits=8", f"output={tmp_path / 'out'}")
    result = run_sensitivity(cfg, check_options(cfg))[0]
    assert result.baseline_acc == pytest.approx(json.loads((float_run / "summary.json").read_text())["test_acc"])


@pytest.mark.parametrize("method", ["aqe", "qnn"])
def test_a_method_that_wraps_the_last_layer_proposes_widths_for_it(float_run: Path, method: str) -> None:
    """aqe and qnn put the last layer in a Sequential with a BatchNorm on the logits: the proposal
    still counts its BOPs under the layer's own name (it raised KeyError 'classifier')."""
    cfg = _config(float_run, f"method={method}", "bits=2", f"budget_gbops={BUDGET}", "batches=1")
    proposal = run_sensitivity(cfg, check_options(cfg))[1]
    assert list(proposal.widths) == list(LAYERS) and proposal.bops / 1e9 <= BUDGET


@pytest.mark.parametrize("method", ["bnn", "qnn", "aqe"])
def test_a_latent_weight_run_is_refused_in_one_line_naming_why(float_run: Path, tmp_path: Path, method: str,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = torch.load(float_run / "last.ckpt", weights_only=True)
    ckpt["config"]["method"] = {"name": method}
    run = tmp_path / "run"
    run.mkdir()
    torch.save(ckpt, run / "last.ckpt")
    code, _, err = run_cli(["sensitivity", f"checkpoint={run}"], tmp_path, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"is a method={method} run: its network (hard-tanh activations" in err
    assert "valid are checkpoints of dorefa, fbf, fp, lbl, lsq, nbn, pact, sq, ste, uniq runs" in err
    assert sorted(p.name for p in run.iterdir()) == ["last.ckpt"]


def test_batches_n_evaluates_the_first_n_test_batches(float_run: Path) -> None:
    cfg = _config(float_run, "batches=2", "bits=4")
    result = run_sensitivity(cfg, check_options(cfg))[0]
    assert result.images == 200 and len(result.rows) == 9  # 2 of the test set's batches of 100, 60


@pytest.mark.parametrize("batches", [0, 2])
def test_each_measurement_reestimates_batchnorm_when_the_method_does(batches: int) -> None:
    """sq and aqe runs evaluate after BatchNorm re-estimation (quant.bn_reestimate_batches), so each
    measurement of theirs does too, on the bench's training batches; other methods keep the statistics."""
    generator = torch.Generator().manual_seed(0)
    train_batches = [(torch.randn(16, 1, 8, 8, generator=generator) * 3 + 1, torch.zeros(16, dtype=torch.long))
                     for _ in range(3)]
    run = OmegaConf.create({"quant": {"bn_reestimate_batches": batches}})
    test = [(train_batches[0][0], torch.zeros(16, dtype=torch.long))]
    bench = Bench(run, nn.Identity(), DataInfo("digits", 1, 8, 10, 48, 16), SimpleNamespace(test=test),
                  torch.device("cpu"), train_batches, None)
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 10)).eval()
    bench.accuracy(model)
    used = torch.cat([images.flatten(1) for images, _ in train_batches[:batches]]) if batches else None
    expected = used.mean(0) if used is not None else torch.zeros(64)  # a fresh BatchNorm's running mean
    torch.testing.assert_close(model[1].running_mean, expected)


def test_greedy_order_is_drop_per_bop_saved() -> None:
    layers = ["a", "b", "c", "d"]
    high = {"a": 10e8, "b": 10e8, "c": 5e8, "d": 1e8}  # BOPs per image
    low = {"a": 2e8, "b": 2e8, "c": 1e8, "d": 1e8}  # d saves nothing
    # per GBOP saved: a 5, b 1, c 1.75, d never (by drop alone d, c, b, a: c would go before b)
    drops = {"a": 4.0, "b": 0.8, "c": 0.7, "d": -1.0}
    assert propose_widths(layers, drops, high, low, 2.6, 2) == {"a": 8, "b": 8, "c": 8, "d": 8}  # 2.6 GBOPs
    assert propose_widths(layers, drops, high, low, 1.9, 2) == {"a": 8, "b": 2, "c": 8, "d": 8}  # 1.8
    assert propose_widths(layers, drops, high, low, 1.79, 2) == {"a": 8, "b": 2, "c": 2, "d": 8}  # 1.4
    assert propose_widths(layers, drops, high, low, 0.6, 2) == {"a": 2, "b": 2, "c": 2, "d": 8}  # 0.6
    with pytest.raises(QnnrunError, match=r"budget_gbops=0.5 is below the minimum of 0.6 GBOPs per image \(every "
                                          r"layer at 2 bits\): valid are budgets >= 0.6$"):
        propose_widths(layers, drops, high, low, 0.5, 2)


def test_the_override_reads_back_as_the_widths_and_numbers_round_up() -> None:
    widths = {"conv1": 8, "layer1.0.conv1": 2, "layer3.2.downsample.0": 2, "fc": 8}
    (parsed,) = OverridesParser.create().parse_overrides([layer_bits_override(widths)])
    assert parsed.key_or_group == "quant.layer_bits" and parsed.value() == widths
    assert gbops_rounded_up(0.0406123456) == "0.04062" and gbops_rounded_up(0.0406) == "0.0406"
    assert gbops_rounded_up(0.04060000001) == "0.04061" and gbops_rounded_up(0.0999950001) == "0.1"


def test_relative_error_by_hand() -> None:
    x = torch.tensor([[3.0, 4.0]])
    assert relative_error(x, x) == 0.0
    assert relative_error(torch.tensor([[3.0, 2.0]]), x) == pytest.approx(4 / 25)
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0


@pytest.mark.parametrize(("args", "message"), [
    (["bits=32"], "bits=32 is not valid: valid are 1-8"),
    (["bits=9"], "bits=9 is not valid: valid are 1-8"),
    (["budget_gbops=0.001"], "budget_gbops=0.001 is below the minimum of 0.001614 GBOPs per image (every layer at 2"),
    (["model=resnet20"], "model=resnet20: qnnrun sensitivity takes the model, the data set and the training settings"),
])
def test_a_bad_value_is_one_line_and_leaves_nothing(float_run: Path, tmp_path: Path, args: list[str], message: str,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    before = sorted(float_run.iterdir())
    code, out, err = run_cli(["sensitivity", f"checkpoint={float_run}", *args], tmp_path, capsys, monkeypatch)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(float_run.iterdir()) == before and not list(tmp_path.iterdir())


def test_a_sweep_writes_beside_each_checkpoint_and_leaves_no_sweep_folder(
        float_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra's outputs/multirun/<date>/<time>/ with an empty folder per job and multirun.yaml stayed behind."""
    shutil.copytree(float_run, tmp_path / "run")
    code, _, err = run_cli(["sensitivity", "-m", "checkpoint=run", "bits=2,4", "batches=1", "quant.calib_batches=1"],
                           tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert all((tmp_path / "run" / f"sensitivity_w{bits}" / CSV_FILE).is_file() for bits in (2, 4))
    code, _, err = run_cli(["sensitivity", "-m", "checkpoint=run,nowhere", "bits=8", "batches=1",
                            "quant.calib_batches=1"], tmp_path, capsys, monkeypatch)
    assert code == 1 and "checkpoint=nowhere: checkpoint not found" in err and "1 job(s) of the sweep failed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and (tmp_path / "run" / "sensitivity_w8").is_dir()


@pytest.mark.parametrize(("overrides", "message"), [
    (["bits.w=2", "bits.a=4"], "bits.w=2 bits.a=4: qnnrun sensitivity tests one width"),
    (["method=fp"], "method=fp is not valid for qnnrun sensitivity: it quantizes nothing; valid are aqe, dorefa"),
    (["method=bnn"], "method=bnn is not valid for qnnrun sensitivity: it runs every layer at 1 bit"),
    (["batches=0"], "batches=0 is not valid: expected null or an integer >= 1"),
    (["batches=1.5"], "batches=1.5 is not valid: expected null or an integer >= 1"),
    (["budget_gbops=lots"], "budget_gbops='lots' is not valid: expected a number > 0"),
    (["budget_gbops=-1"], "budget_gbops=-1 is not valid: expected a number > 0"),
    (["quant.init=mmse", "bits=1"], "bits=1 is not valid with quant.init=mmse (the affine quantizer keeps a zero "
                                    "level): valid are 2-8, or quant.init=maxabs"),
    (["quant.layer_bits={classifier: 8}"], "quant.layer_bits={'classifier': 8} is not valid here"),
    (["device=tpu"], "device='tpu' is not valid: valid are auto, cpu, cuda, cuda:N"),
    (["output=[1]"], "output=[1] is not valid: expected null or a folder path"),
    (["checkpoint=nowhere"], "checkpoint=nowhere: checkpoint not found: nowhere (give a .ckpt file or a run folder"),
])
def test_bad_options_name_the_value_and_what_is_valid(float_run: Path, overrides: list[str], message: str) -> None:
    cfg = _config(float_run, *overrides)
    with pytest.raises(QnnrunError) as error:
        check_options(cfg)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_checkpoint_no_calibration_and_a_file_the_user_made_are_refused(
        float_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(QnnrunError, match="^qnnrun sensitivity needs checkpoint=PATH"):
        check_options(compose_config([], config_name="sensitivity"))
    cfg = _config(float_run, "quant.calib_batches=0")
    with pytest.raises(QnnrunError, match=r"^quant.calib_batches=0 is not valid: expected an integer >= 1$"):
        run_sensitivity(cfg, check_options(cfg))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / CSV_FILE).write_text("my numbers\n")
    code, _, err = run_cli(["sensitivity", f"checkpoint={float_run}", f"output={mine}"], tmp_path, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"output={mine} holds {CSV_FILE}, which qnnrun sensitivity did not write" in err
    assert sorted(p.name for p in mine.iterdir()) == [CSV_FILE] and (mine / CSV_FILE).read_text() == "my numbers\n"


def test_help_describes_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run_cli(["sensitivity", "--help"], tmp_path, capsys, monkeypatch)
    assert code == 0 and out.startswith("qnnrun sensitivity: test accuracy lost when each conv/linear layer")
    assert "budget_gbops=X" in out and "calibration" in out and "method: " in out
    # Only what it takes: not the train config it composes, nor the choices it refuses, nor model= as the example.
    groups = dict(line.split(": ", 1) for line in out.split("== Configuration groups ==")[1].split("== Config ==")[0]
                  .splitlines() if ": " in line)
    methods = ", ".join(sorted(set(METHODS) - set(UNSUITED_METHODS)))
    assert groups == {"method": methods, "bits": "1, 2, 3, 4, 5, 6, 7, 8"}
    assert "e.g. method=lsq bits=4." in out and "model=" not in out
    config = OmegaConf.create(out.split("Override anything in the config (foo.bar=value).")[1].split("\n\n\n")[0])
    assert sorted(config) == ["batches", "bits", "budget_gbops", "checkpoint", "device", "method", "output", "paths",
                              "quant"]


def test_a_config_without_overrides_checks(float_run: Path) -> None:
    cfg = _config(float_run)
    options = check_options(cfg)
    assert (options.bits, options.method, options.budget_gbops, options.batches) == (2, "ste", None, None)
    assert options.output == float_run / "sensitivity_w2" and options.checkpoint == float_run / "last.ckpt"
    with open_dict(cfg):
        cfg.method.name = "lsq"
    assert check_options(cfg).output == float_run / "sensitivity_lsq_w2"


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(set(METHODS) - set(UNSUITED_METHODS)))
def test_every_quantizing_method_measures_one_layer_at_a_time(float_run: Path, method: str) -> None:
    cfg = _config(float_run, f"method={method}", "batches=1")
    result = run_sensitivity(cfg, check_options(cfg))[0]
    assert [(row.layer, row.mode) for row in result.rows] == [(layer, mode) for layer in LAYERS for mode in MODES]
    for row in result.rows:
        assert row.weight_bits == (2 if row.mode != "inputs" else 32), row
        assert row.input_bits in ((2, 8, 32) if row.mode != "weights" else (32,)), row
        if (row.weight_bits, row.input_bits) == (32, 32):  # nothing quantized (an image input kept float)
            assert row.drop == 0.0, row  # the baseline is evaluated as the measurements are
        assert all(error > 0 for error in (row.weight_error, row.input_error) if error is not None), row


def test_the_input_error_sums_over_every_batch() -> None:
    """||Q(x) - x||^2 / ||x||^2 over all the batches a quantizer saw, not the last one's."""
    from qnnrun.sensitivity import InputErrorMeter

    class Round(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.round(x)

    rounding = Round()
    meter = InputErrorMeter(rounding)
    rounding(torch.tensor([0.4]))  # error 0.16 of 0.16
    rounding(torch.tensor([1.0]))  # error 0 of 1
    assert meter.close() == pytest.approx(0.16 / 1.16)


def test_a_write_that_fails_leaves_no_folder_it_made(measured: dict[int, Sensitivity], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """output=a/b/c with none of them there: a failed write removes what it wrote and the three folders
    (only the last was removed, leaving a/b)."""
    import qnnrun.sensitivity as sensitivity

    def full(path: Path, write: object) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(sensitivity, "replace_atomic", full)  # the PNG, after the text and CSV files
    with pytest.raises(OSError, match="no space"):
        sensitivity.write_outputs(tmp_path / "a" / "b" / "c", "text", measured[2])
    assert list(tmp_path.iterdir()) == []
