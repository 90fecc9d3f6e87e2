"""What TensorBoard shows of a sweep, asked of TensorBoard's own backend over HTTP (its WSGI app):
every run in the HParams view with every setting that tells runs apart, bits as a discrete domain,
the accuracy metrics, and no constant or stray scalars."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hydra_utils import run_cli

HPARAMS = {"method", "bits_w", "bits_a", "model", "dataset", "seed", "epochs", "lr", "optimizer", "first_layer",
           "last_layer", "init_from", "precision", "gbops", "weight_mb", "layer_bits", "distill"}


def _tensorboard(logdir: Path, runs: int):
    """A werkzeug client of TensorBoard's WSGI application on ``logdir``, its ``runs`` runs loaded."""
    import werkzeug.test
    from tensorboard import default, program
    from tensorboard.backend import application

    board = program.TensorBoard(default.get_plugins())
    board.configure(argv=[None, "--logdir", str(logdir), "--load_fast=false", "--reload_interval=0"])
    provider, multiplexer = board._make_data_provider()
    app = application.TensorBoardWSGIApp(board.flags, board.plugin_loaders, provider, board.assets_zip_provider,
                                         multiplexer)
    client = werkzeug.test.Client(app)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(json.loads(client.get("/data/runs").get_data(as_text=True))) < runs:
        time.sleep(0.2)
    return client


def test_tensorboard_shows_every_run_setting_and_metric_of_a_sweep(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli(["train", "-m", "method=fp,ste", "bits=2", "trainer.epochs=2", "trainer.progress=false",
                            "trainer.num_threads=1", "hydra.sweep.dir=sweep"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(["train", "method=lsq", "bits=2", "quant.layer_bits={classifier: 4}", "trainer.epochs=1",
                            "trainer.progress=false", "trainer.num_threads=1", "hydra.run.dir=sweep/mixed"], tmp_path,
                           capsys, monkeypatch)
    assert code == 0, err
    client = _tensorboard(tmp_path / "sweep", 3)
    experiment = json.loads(client.post("/data/plugin/hparams/experiment",
                                        json={"experimentName": ""}).get_data(as_text=True))
    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    assert set(infos) == HPARAMS
    for bits in ("bits_w", "bits_a"):  # evenly spaced 1..8, 32 in parallel coordinates, not 4.0000 on a line
        assert infos[bits]["domainDiscrete"] == [1, 2, 3, 4, 5, 6, 7, 8, 32]
    assert infos["first_layer"]["domainDiscrete"] == ["fp", "8", "same"]
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} == {"test/acc", "test/best_acc", "test/vs_init"}

    groups = json.loads(client.post("/data/plugin/hparams/session_groups", json={
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                  "STATUS_RUNNING"],
        "colParams": [], "startIndex": 0, "sliceSize": 100}).get_data(as_text=True))["sessionGroups"]
    runs = {group["hparams"]["method"]: group for group in groups}
    assert set(runs) == {"fp", "ste", "lsq"}
    assert runs["ste"]["hparams"]["bits_w"] == 2 and runs["fp"]["hparams"]["bits_w"] == 32
    mixed = runs.pop("lsq")["hparams"]  # no one width: blank bits (they showed the unmatched layers', W2A2)
    assert "bits_w" not in mixed and "bits_a" not in mixed and mixed["layer_bits"].endswith("classifier=W4A4")
    # TensorBoard shows one run's experiment record: the mixed run's alone still declares the bits columns.
    alone = json.loads(_tensorboard(tmp_path / "sweep" / "mixed", 1).post(
        "/data/plugin/hparams/experiment", json={"experimentName": ""}).get_data(as_text=True))
    assert {info["name"]: info.get("domainDiscrete") for info in alone["hparamInfos"]}["bits_w"] == [
        1, 2, 3, 4, 5, 6, 7, 8, 32]
    summaries = {json.loads(p.read_text())["method"]: json.loads(p.read_text())
                 for p in (tmp_path / "sweep").glob("*/summary.json")}
    for method, group in runs.items():
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert metrics["test/acc"] == pytest.approx(summaries[method]["test_acc"])
        assert metrics["test/best_acc"] == pytest.approx(summaries[method]["best_test_acc"])
        assert group["hparams"]["gbops"] == pytest.approx(summaries[method]["gbops"])

    tags = json.loads(client.get("/data/plugin/scalars/tags").get_data(as_text=True))
    assert len(tags) == 3
    for run_tags in tags.values():  # curves only: no lone HParams dots, no flat cost lines
        assert {"test/acc", "test/best_acc", "train/acc"} <= set(run_tags)
        assert not [tag for tag in run_tags if tag.startswith(("hparam/", "cost/"))]
    # Scalars shows one section per tag prefix, in alphabetical order: the first is test (accuracy), and
    # the method's own curves (quantized fraction, learned steps) sit in train, after train/acc and loss.
    sections = sorted({tag.partition("/")[0] for run_tags in tags.values() for tag in run_tags})
    assert sections[0] == "test" and "train/quant/quantized_fraction" in tags[next(r for r in tags if "ste" in r)]
    text = json.loads(client.get("/data/plugin/text/tags").get_data(as_text=True))
    assert all(run_tags == ["cost/text_summary"] for run_tags in text.values()) and len(text) == 3
