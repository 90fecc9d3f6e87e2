"""Per-layer bit widths (``quant.layer_bits``): which layer runs at which width, for every method,
and what a mixed run reports, records and exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra_utils import compose_config, run_cli

from qnnrun.build import build_quantized_model, example_input
from qnnrun.data import build_data, dataset_info
from qnnrun.engine import train
from qnnrun.errors import QnnrunError
from qnnrun.evaluate import load_saved_run
from qnnrun.export.run import compare_predictions, export_checkpoint, integer_export, integer_model
from qnnrun.methods import METHODS
from qnnrun.metrics.bops import layer_costs, totals
from qnnrun.quant.convert import LayerBits, layer_bits
from qnnrun.quant.layers import quant_layers

CPU = torch.device("cpu")
# The default MLP on digits: features.1 (first), features.4, classifier (last).
RULES = "quant.layer_bits={features.4: {w: 4, a: 3}, classifier: 6}"


def _widths(overrides: list[str]) -> dict[str, tuple[int, int]]:
    """(weight bits, input bits) of each conv/linear layer as built, by name (32: float)."""
    cfg = compose_config(overrides)
    info = dataset_info(cfg.dataset)
    model, _ = build_quantized_model(cfg, info, CPU)
    return {c.name: (c.weight_bits, c.input_bits) for c in layer_costs(model, example_input(info, CPU, 1))}


def test_a_rule_overrides_bits_and_the_layer_policy_and_the_first_match_wins() -> None:
    assert _widths(["bits=2"]) == {"features.1": (32, 32), "features.4": (2, 2), "classifier": (32, 32)}
    assert _widths(["bits=2", RULES]) == {"features.1": (32, 32), "features.4": (4, 3), "classifier": (6, 6)}
    # A side left out keeps the run's bits; the first matching pattern wins.
    assert _widths(["bits=2", "quant.layer_bits={features.4: 8, features.*: {w: 5}}"]) == {
        "features.1": (5, 8), "features.4": (8, 8), "classifier": (32, 32)}  # the image input stays >= 8 bits
    # ... on a layer whose input no floor raises: the side left out is the run's bits.w / bits.a, not 8.
    assert _widths(["bits.w=3", "bits.a=2", "quant.layer_bits={features.4: {w: 5}, classifier: {a: 6}}"]) == {
        "features.1": (32, 32), "features.4": (5, 2), "classifier": (3, 6)}
    assert layer_bits(0, 3, 2, 2, "fp", "fp", rule=LayerBits(4, 4)) == LayerBits(4, 8)
    assert layer_bits(0, 3, 2, 2, "fp", "fp", image_input_bits=32, rule=LayerBits(4, 4)) == LayerBits(4, 32)


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"fp"}))
def test_every_method_runs_each_layer_at_its_rules_widths(method: str) -> None:
    rule, width = ("features.4", 1) if method == "bnn" else ("features.4", 3)
    widths = _widths([f"method={method}", "bits=2", f"quant.layer_bits={{{rule}: {width}}}"])
    assert widths[rule] == (width, width), widths
    cfg = compose_config([f"method={method}", "bits=2", f"quant.layer_bits={{{rule}: {width}}}"])
    model, built = build_quantized_model(cfg, dataset_info(cfg.dataset), CPU)
    layer = dict(quant_layers(model))[rule]
    assert (layer.weight_quant.bits, layer.input_quant.bits) == (width, width)
    assert built.mixed and built.bits_label.startswith(f"mixed ({rule} W{width}/A{width}")


@pytest.mark.parametrize(("rules", "label", "method"), [
    (RULES, "mixed (features.4 W4/A3, classifier W6/A6, others float)", "ste"),  # features.1 float: the policy
    ("quant.layer_bits={features.4: 4}", "mixed (features.4 W4/A4, others float)", "ste"),
    ("quant.layer_bits={features.*: 4, classifier: 8}", "mixed (features.* W4/A4 or W4/A8, classifier W8/A8)",
     "ste"),
    # A rule's layers as they run: the image input stays at 8 bits (it was labelled W3/A2), float for dorefa.
    ("quant.layer_bits={features.1: {w: 3}}", "mixed (features.1 W3/A8, others W2/A2 or float)", "ste"),
    ("quant.layer_bits={features.1: 8}", "mixed (features.1 W8/A32, others W2/A2 or float)", "dorefa")])
def test_the_log_label_names_the_widths_each_layer_runs_at(rules: str, label: str, method: str) -> None:
    cfg = compose_config(["bits=2", rules, f"method={method}"])
    _, built = build_quantized_model(cfg, dataset_info(cfg.dataset), CPU)
    assert built.bits_label == label


def test_float_runs_ignore_the_rules_and_warn_of_a_pattern_that_names_no_layer(
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config(["method=fp", RULES])
    with caplog.at_level("WARNING", logger="qnnrun"):
        model, method = build_quantized_model(cfg, dataset_info(cfg.dataset), CPU)
        assert not method.quantizes and not quant_layers(model) and not caplog.text
        cfg = compose_config(["method=fp", "quant.layer_bits={features.4: 4, layer9: 4}"])  # it said nothing
        build_quantized_model(cfg, dataset_info(cfg.dataset), CPU)
    assert ("'layer9' matches no layer of model=mlp: its layers are features.1, features.4, classifier (method=fp "
            "ignores the rules)") in caplog.text


@pytest.mark.parametrize("method", ["bnn", "qnn", "aqe"])
def test_a_layer_a_method_wraps_is_shown_by_the_name_its_rules_use(method: str) -> None:
    """The binary nets wrap the last layer with their output BatchNorm (``classifier.0``); the BOPs
    table, summary.json and the exports name it ``classifier``, as a rule must."""
    width = 1 if method == "bnn" else 4
    assert list(_widths([f"method={method}"])) == ["features.1", "features.4", "classifier"]
    assert _widths([f"method={method}", f"quant.layer_bits={{classifier: {width}}}"])["classifier"] == (width, width)


@pytest.mark.parametrize(("overrides", "message"), [
    (["quant.layer_bits={layer9: 4}"],
     "quant.layer_bits: 'layer9' matches no layer of model=mlp: its layers are features.1, features.4, classifier"),
    (["quant.layer_bits={features.*: 4, features.1: 8}"],
     "every layer 'features.1' matches is matched by an earlier pattern (the first match wins)"),
    (["method=bnn", "quant.layer_bits={features.4: 4}"],
     "quant.layer_bits['features.4'] asks method=bnn for 4 bits: its layers run at 1, 32 (float)"),
    (["quant.layer_bits={features.4: 9}"],
     "quant.layer_bits['features.4']=9 is not a valid bit width: valid are integers 1-8, or 32 for float"),
    (["quant.layer_bits={features.4: {w: 2, b: 3}}"], "valid keys are w and a"),
    (["quant.layer_bits=4"], "expected a mapping from layer-name patterns to bits"),
    (["quant.init=mmse", "quant.layer_bits={features.4: {w: 1}}"],
     "quant.layer_bits['features.4']=1 is not valid with quant.init=mmse"),
])
def test_bad_rules_are_one_line_on_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, overrides: list[str],
                                                 message: str) -> None:
    # Every case on bops (nothing trained); train, which builds the model the same way, on two.
    for command in ("bops", "train") if "layer9" in message or "bnn" in str(overrides) else ("bops",):
        code, out, err = run_cli([command, *overrides], tmp_path, capsys, monkeypatch)
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, (command, err)
    assert not (tmp_path / "outputs").exists()


def test_a_mixed_run_records_its_widths_and_exports_them(tmp_path: Path) -> None:
    cfg = compose_config(["bits=2", "trainer.epochs=2", RULES], data_dir=tmp_path / "data")
    summary = train(cfg, tmp_path / "run")
    assert summary["layer_bits"] == {"features.1": {"w": 32, "a": 32}, "features.4": {"w": 4, "a": 3},
                                     "classifier": {"w": 6, "a": 6}}  # every layer's real widths
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["layer_bits"] == summary["layer_bits"]
    csv = (tmp_path / "run" / "bops.csv").read_text().splitlines()
    assert any(line.startswith("features.4,") and ",4,3," in line for line in csv), csv
    run = load_saved_run(tmp_path / "run", CPU)
    assert summary["gbops"] == pytest.approx(totals(layer_costs(run.model, example_input(run.info, CPU, 1)))
                                             ["bops"] / 1e9)
    export = integer_export(run)
    assert {name: record["weight_bits"] for name, record in export["layers"].items()} == {"features.4": 4,
                                                                                         "classifier": 6}
    test = build_data(cfg.dataset, data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", device=CPU, seed=0).test
    agreement = compare_predictions(run.model, integer_model(export, CPU), test)
    assert agreement.images == 360 and agreement.disagreements == 0
    onnx = pytest.importorskip("onnx")
    export_checkpoint(str(tmp_path / "run"), "onnx", str(tmp_path / "run.onnx"), "cpu")
    meta = {prop.key: prop.value for prop in onnx.load(str(tmp_path / "run.onnx")).metadata_props}
    assert json.loads(meta["qnnrun.layer_bits"]) == summary["layer_bits"]
    assert meta["qnnrun.bits"] == run.method.bits_label and meta["qnnrun.bits"].startswith("mixed (features.4 W4/A3")


def test_rules_the_method_refuses_fail_before_training(tmp_path: Path) -> None:
    cfg = compose_config(["method=bnn", "quant.layer_bits={classifier: 2}"], data_dir=tmp_path / "data")
    with pytest.raises(QnnrunError, match="asks method=bnn for 2 bits"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_report_labels_mixed_runs_marks_the_front_and_keeps_them_out_of_the_bits_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def write(name: str, acc: float, gbops: float, bits: int = 2, layer_bits: dict | None = None) -> None:
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(
            {"status": "done", "method": "ste", "model": "mlp", "dataset": "digits", "bits_w": bits, "bits_a": bits,
             "epochs": 5, "seed": 0, "test_acc": acc, "best_test_acc": acc, "gbops": gbops,
             "weight_memory_mb": 0.1, "compression": 8.0, "train_time_s": 1.0, "layer_bits": layer_bits}))

    write("w2", 97.0, 0.0016)
    write("w8", 98.0, 0.0074, bits=8)
    write("mixed", 98.1, 0.0030, bits=4, layer_bits={"features.1": {"w": 4, "a": 8}, "features.4": {"w": 4, "a": 4},
                                                     "classifier": {"w": 3, "a": 3}})
    write("broken", 90.0, 0.001, layer_bits={"features.1": 4})
    code, out, err = run_cli(["report", "runs", "--no-plots"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    rows = {line.split("|")[4].strip(): line for line in out.split("## By bits")[0].splitlines()
            if line.startswith("| ste")}
    assert list(rows) == ["W2A2", "W8A8", "mixed[w 4,4,3 a 8,4,3]"]  # mixed after uniform (its bits are 4)
    front = {label for label, row in rows.items() if row.rstrip(" |").endswith("yes")}
    assert front == {"W2A2", "mixed[w 4,4,3 a 8,4,3]"}  # W8A8 is beaten by the mixed run in both
    code, _, err = run_cli(["report", "runs", "--no-plots", "--out", "out"], tmp_path, capsys, monkeypatch)
    with open(tmp_path / "out" / "report.csv", encoding="utf-8") as f:  # the CSV marks the same front
        marked = {(row["bits_w"], row["layer_bits"]): row["pareto"] for row in csv.DictReader(f)}
    assert marked == {("2", ""): "1", ("8", ""): "0", ("4", "w 4,4,3 a 8,4,3"): "1"}
    assert "mixed" not in out.split("## By bits")[1].split("##")[0]
    assert 'layer_bits {"features.1": 4} is not a mapping of layer patterns to {w, a} bits' in out
