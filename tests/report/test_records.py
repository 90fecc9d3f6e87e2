"""``qnnrun report`` on whatever run folders hold: every record is validated when it is read, so
failed, unfinished, unreadable, hand-edited and duplicate records are listed with the reason and
never stop the report of the real runs beside them (issue 35, item 5)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra_utils import compose_config, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnnrun import engine
from qnnrun.checkpoint import load_checkpoint
from qnnrun.errors import QnnrunError
from qnnrun.report import main
from qnnrun.report.records import (CURVE_TAG, EVENTS_NOTE, NUMBERS, Identity, Problem, Run, canonical, config_text,
                                    read_folder)
from qnnrun.report.tables import PROBLEMS_TITLE

# Two seeds of one tiny finished run: one group of two.
TINY = ["method=ste", "bits=2", "model.widths=[32,32]", "trainer.num_threads=1", "trainer.progress=false",
        "trainer.epochs=1"]
SEEDS = (0, 1)
IDENTITY_KEYS = ("method", "model", "dataset", "bits_w", "bits_a", "seed", "epochs")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders of two real finished trainings (digits, 1 epoch), trained once per module."""
    root = tmp_path_factory.mktemp("real")
    folders = {}
    for seed in SEEDS:
        folder = root / f"seed{seed}"
        engine.train(compose_config([*TINY, f"seed={seed}"], data_dir=root / "data"), folder)
        folders[f"seed{seed}"] = folder
    return folders


def copy_runs(real_runs: dict[str, Path], root: Path) -> list[Path]:
    copies = []
    for name, folder in real_runs.items():
        copies.append(root / name)
        shutil.copytree(folder, copies[-1])
    return copies


def summary_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text())


def failure_record(**changes: Any) -> dict[str, Any]:
    """A summary.json as qnnrun.sweep.record_failure writes it for ``trainer.epochs=abc``."""
    record = {"status": "failed", "error": "trainer.epochs='abc' is not valid: expected an integer >= 0",
              "method": "ste", "model": "mlp", "dataset": "digits", "bits_w": 2, "bits_a": 2, "seed": 0,
              "epochs": "abc", "overrides": ["trainer.epochs=abc"],
              "config": {"seed": 0, "trainer": {"epochs": "abc"}, "method": {"name": "ste"}}}
    return {**record, **changes}


def write(folder: Path, name: str, content: str | bytes) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        (folder / name).write_bytes(content)
    else:
        (folder / name).write_text(content)


def report(root: Path, *options: str) -> tuple[int, str]:
    """``qnnrun report ROOT OPTIONS`` through the report's entry point: (exit code, report.md).
    Exit code 1 only through a QnnrunError (a one-line error); any other exception fails the test."""
    try:
        main([str(root), "--out", str(root / "report"), *options])
    except QnnrunError:
        return 1, ""
    return 0, (root / "report" / "report.md").read_text()


def problem_rows(text: str) -> dict[str, tuple[str, str]]:
    """Folder -> (status, reason) of each row of the report's problems table."""
    if PROBLEMS_TITLE not in text:
        return {}
    table = text.split(PROBLEMS_TITLE)[1].split("\n## ")[0].strip().splitlines()
    rows = {}
    for line in table[2:]:  # the header and its rule
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 4, line
        rows[cells[1]] = (cells[0], cells[3])
    return rows


def csv_rows(root: Path, out: str = "report") -> list[dict[str, str]]:
    return list(csv.DictReader(open(root / out / "report.csv", encoding="utf-8")))


def check_real_runs_reported(root: Path, text: str, real: list[Path], out: str = "report") -> None:
    """The real runs (folders under ``root``) form the one group of their identity that has finished
    runs, with their own numbers, and are not in the problems table."""
    accs = [summary_of(folder)["test_acc"] for folder in real]
    identity = {"method": "ste", "model": "mlp", "dataset": "digits", "bits_w": "2", "bits_a": "2", "epochs": "1"}
    (row,) = [r for r in csv_rows(root, out) if r["runs"] != "0" and all(r[k] == v for k, v in identity.items())]
    assert row["runs"] == str(len(real)) and row["seeds"] == " ".join(map(str, SEEDS))
    assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(accs))
    assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(accs))
    assert f": {len(real)} done," in text
    rows = problem_rows(text)
    assert not any(str(folder) in rows or str(folder.relative_to(root.parent)) in rows for folder in real), rows


# --- The reproduced crash and each kind of record, explicitly ---------------------------------


def test_failed_record_with_text_epochs_beside_a_finished_run(
        real_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: ``qnnrun train trainer.epochs=abc`` leaves a failure record whose epochs is
    a string; beside a finished run the report sorted int against str (TypeError). Now the record is
    listed with its error, and the report (tables, CSV, plots) goes on."""
    real = copy_runs(real_runs, tmp_path / "outputs")
    failed = tmp_path / "outputs" / "2026-12-06" / "03-52-29"
    write(failed, "summary.json", json.dumps(failure_record(), indent=2))
    write(failed, ".hydra/overrides.yaml", "- trainer.epochs=abc\n")
    code, out, err = run_cli(["report", "outputs"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    text = (tmp_path / "outputs" / "report.md").read_text()
    assert text in out
    assert "2 done, 1 failed, 0 unfinished" in text
    rows = problem_rows(text)
    assert rows == {"outputs/2026-12-06/03-52-29": (
        "failed", "trainer.epochs='abc' is not valid: expected an integer >= 0 (not grouped: summary.json: "
                  "epochs \"abc\" is not an integer)")}
    assert "| outputs/2026-12-06/03-52-29 | trainer.epochs=abc |" in text.replace("  ", "")
    check_real_runs_reported(tmp_path / "outputs", text, real, out="")
    for name in ("accuracy_vs_bits.png", "accuracy_vs_gbops.png", "test_accuracy_curves.png"):
        assert (tmp_path / "outputs" / name).read_bytes().startswith(PNG_MAGIC), name


def test_a_failed_record_with_a_readable_identity_stays_in_its_group(real_runs: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """A sweep's failed job (``bits.w=9``) keeps its place beside its finished siblings."""
    real = copy_runs(real_runs, tmp_path)
    write(tmp_path / "bad_lr", "summary.json", json.dumps(failure_record(epochs=1, error="ValueError: lr")))
    code, text = report(tmp_path, "--no-plots")
    assert code == 0
    check_real_runs_reported(tmp_path, text, real)
    assert next(r for r in csv_rows(tmp_path) if r["bits_w"] == "2")["failed"] == "1"
    assert problem_rows(text) == {str(tmp_path / "bad_lr"): ("failed", "ValueError: lr")}


def test_a_failed_mixed_run_is_not_counted_in_a_uniform_group(real_runs: dict[str, Path], tmp_path: Path) -> None:
    """Its per-layer widths are known only once a run builds its model: listed, not grouped."""
    real = copy_runs(real_runs, tmp_path)
    config = {"seed": 0, "trainer": {"epochs": 1}, "method": {"name": "ste"}, "quant": {"layer_bits": {"fc1": 8}}}
    write(tmp_path / "mixed", "summary.json", json.dumps(failure_record(epochs=1, error="boom", config=config)))
    code, text = report(tmp_path, "--no-plots")
    assert code == 0
    check_real_runs_reported(tmp_path, text, real)
    assert all(row["failed"] == "0" for row in csv_rows(tmp_path))
    assert problem_rows(text)[str(tmp_path / "mixed")][1].startswith("boom (not grouped: its per-layer widths")


def test_a_failure_record_holds_the_widths_the_method_runs_at(tmp_path: Path) -> None:
    """method=fp at bits=4 runs at 32 bits: its record must not make a phantom "fp W4A4" group."""
    from hydra_utils import compose_config

    from qnnrun.errors import QnnrunError
    from qnnrun.sweep import record_failure

    for method, bits in (("fp", 32), ("bnn", 1), ("ste", 4)):
        record_failure(tmp_path / method, compose_config([f"method={method}", "bits=4"]), QnnrunError("boom"), [])
        record = json.loads((tmp_path / method / "summary.json").read_text())
        assert (record["bits_w"], record["bits_a"]) == (bits, bits), method


def test_unfinished_runs_with_broken_files_are_listed_with_how_far_they_got(real_runs: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    """A run cut off after epoch 1 (its events, no summary) whose config cannot be read, one whose
    config is not a mapping, and one whose checkpoint and events are garbage."""
    real = copy_runs(real_runs, tmp_path)
    for name, config in [("cut_bad_yaml", "trainer: [epochs: 3\n"), ("cut_list", "- trainer\n- epochs\n"),
                         ("cut_ok", "trainer:\n  epochs: 3\n")]:
        folder = tmp_path / name
        folder.mkdir()
        for events in real_runs["seed0"].glob("events.out.tfevents.*"):
            shutil.copy(events, folder)
        write(folder, ".hydra/config.yaml", config)
    write(tmp_path / "garbage", "last.ckpt", b"\x00\xffnot a checkpoint")
    write(tmp_path / "garbage", "events.out.tfevents.1.host.1.0", b"\x13\x00\x00\x00garbage\xff" * 7)
    write(tmp_path / "garbage", ".hydra/overrides.yaml", b"\xff\xfe- a=1")
    code, text = report(tmp_path, "--epochs", "1")
    assert code == 0
    check_real_runs_reported(tmp_path, text, real)
    rows = problem_rows(text)
    acc = summary_of(real_runs["seed0"])["test_acc"]
    interrupted = "no summary.json: interrupted or still running"
    assert rows[str(tmp_path / "cut_ok")] == ("unfinished", f"{interrupted}, at epoch 1 of 3 (test acc {acc:.2f}%)")
    status, reason = rows[str(tmp_path / "cut_bad_yaml")]
    assert status == "unfinished" and reason.startswith(f"{interrupted}, at epoch 1 (test acc {acc:.2f}%); "
                                                        ".hydra/config.yaml: unreadable (ParserError: ")
    assert rows[str(tmp_path / "cut_list")] == ("unfinished", f"{interrupted}, at epoch 1 (test acc {acc:.2f}%)")
    status, reason = rows[str(tmp_path / "garbage")]
    assert status == "unfinished" and reason.startswith(
        f"{interrupted}; .hydra/overrides.yaml: unreadable (UnicodeDecodeError: ")
    assert "2 done, 0 failed, 4 unfinished;" in text


def test_a_report_of_unreadable_records_only_claims_no_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "runs" / "cut", "summary.json", '{"status": "done", "test_acc": ')
    code, out, err = run_cli(["report", "runs"], tmp_path, capsys, monkeypatch)
    assert code == 0 and "1 unreadable" in out, err
    assert out.strip().splitlines()[-1] == "written: runs/report.md, runs/report.csv"  # said "and the plots in runs"
    assert not list((tmp_path / "runs").glob("*.png"))


def test_unreadable_and_hand_edited_records_are_listed_with_the_reason(real_runs: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    real = copy_runs(real_runs, tmp_path)
    done = summary_of(real_runs["seed0"])
    records: dict[str, str | bytes] = {
        "invalid_json": '{"status": "done", "test_acc": ',
        "not_utf8": b'{"status": "done", "method": "\xff"}',
        "a_list": json.dumps([done]),
        "empty": "",
        "no_status": json.dumps({k: v for k, v in done.items() if k != "status"}),
        "other_status": json.dumps({**done, "status": "running"}),
        "no_test_acc": json.dumps({k: v for k, v in done.items() if k != "test_acc"}),
        "text_bits": json.dumps({**done, "bits_w": "2"}),
        "bool_bits": json.dumps({**done, "bits_a": True}),
        "float_epochs": json.dumps({**done, "epochs": 1.0}),
        "null_seed": json.dumps({**done, "seed": None}),
        "nan_acc": json.dumps({**done, "test_acc": math.nan}),
        "big_gbops": json.dumps({**done, "gbops": 1e300}),
        "list_method": json.dumps({**done, "method": ["ste"]}),
        "dollar_model": json.dumps({**done, "model": "$\\frac$"}),
        "text_overrides": json.dumps({**done, "overrides": "seed=0"}),
    }
    for name, content in records.items():
        write(tmp_path / name, "summary.json", content)
    write(tmp_path / "bad_overrides_file", "summary.json", json.dumps(done))
    write(tmp_path / "bad_overrides_file", ".hydra/overrides.yaml", "{a: [1\n")
    code, text = report(tmp_path)
    assert code == 0
    check_real_runs_reported(tmp_path, text, real)
    rows = problem_rows(text)
    expected = {
        "invalid_json": "summary.json: unreadable (JSONDecodeError: Expecting value: line 1 column 32 (char 31))",
        "not_utf8": "summary.json: unreadable (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in "
                    "position 30: invalid start byte)",
        "a_list": 'summary.json: holds [{"status": "done", "method": "ste", ..., not a record of its keys',
        "empty": "summary.json: unreadable (JSONDecodeError: Expecting value: line 1 column 1 (char 0))",
        "no_status": "summary.json: status null is not 'done', 'failed' or 'duplicate'",
        "other_status": "summary.json: status \"running\" is not 'done', 'failed' or 'duplicate'",
        "no_test_acc": "summary.json: test_acc is missing",
        "text_bits": "summary.json: bits_w \"2\" is not an integer in [1, 32]",
        "bool_bits": "summary.json: bits_a true is not an integer in [1, 32]",
        "float_epochs": "summary.json: epochs 1.0 is not an integer >= 0",
        "null_seed": "summary.json: seed null is not an integer",
        "nan_acc": "summary.json: test_acc NaN is not a number in [0, 100]",
        "big_gbops": "summary.json: gbops 1e+300 is not a number in [0, 1e+15]",
        "list_method": "summary.json: method [\"ste\"] is not a name (letters, digits, _ . + -)",
        "dollar_model": "summary.json: model \"$\\\\frac$\" is not a name (letters, digits, _ . + -)",
        "text_overrides": "summary.json: overrides \"seed=0\", not a list of key=value lines",
        "bad_overrides_file": ".hydra/overrides.yaml: unreadable (ParserError: while parsing a flow sequence)",
    }
    assert rows == {str(tmp_path / name): ("invalid", reason) for name, reason in expected.items()}
    assert f"; {len(expected)} unreadable records;" in text
    assert (tmp_path / "report" / "accuracy_vs_gbops.png").read_bytes().startswith(PNG_MAGIC)


def test_a_duplicate_record_is_not_a_run_of_its_own(real_runs: dict[str, Path], tmp_path: Path) -> None:
    """A sweep job that repeated an earlier job's run points at it: the run counts once, there, and
    the duplicate is named with the folder it repeats."""
    real = copy_runs(real_runs, tmp_path)
    first = summary_of(real[0])
    duplicate = tmp_path / "3_bits=8"  # a float run of a bits sweep: the same run as seed0's job
    write(duplicate, "summary.json", json.dumps(
        {"status": "duplicate", "same_as": str(real[0]), **{k: first[k] for k in IDENTITY_KEYS},
         "overrides": ["bits=8"], "run_dir": str(duplicate)}))
    write(tmp_path / "dup_bad", "summary.json", json.dumps({"status": "duplicate", "same_as": 3}))
    code, text = report(tmp_path, "--no-plots")
    assert code == 0
    check_real_runs_reported(tmp_path, text, real)
    (row,) = [r for r in csv_rows(tmp_path)]
    assert row["runs"] == "2" and row["failed"] == "0"
    assert problem_rows(text) == {
        str(duplicate): ("duplicate", f"the same run as {real[0]}: counted once, there"),
        str(tmp_path / "dup_bad"): ("invalid", "summary.json: a duplicate whose same_as 3 is not a folder")}
    assert "2 runs under" in text and "2 done, 0 failed, 0 unfinished; 1 duplicate record (each" in text
    assert f"| duplicate | {duplicate} | bits=8 |" in re.sub(" +", " ", text)


def test_broken_events_beside_a_finished_run_leave_its_numbers(real_runs: dict[str, Path], tmp_path: Path) -> None:
    """Events the reader cannot open (here: a folder named like an events file) cost the run its
    curves, with a note; its final numbers are still counted."""
    real = copy_runs(real_runs, tmp_path)
    (real[0] / "events.out.tfevents.0.host.0.0").mkdir()
    code, text = report(tmp_path, "--epochs", "1")
    assert code == 0
    check_real_runs_reported(tmp_path, text.replace(f"| {real[0]} ", "| (noted) "), real)
    status, reason = problem_rows(text)[str(real[0])]
    assert status == "done" and reason.startswith("TensorBoard events: unreadable (IsADirectoryError: ")
    assert (tmp_path / "report" / "test_accuracy_curves.png").read_bytes().startswith(PNG_MAGIC)


def test_a_run_in_a_folder_whose_name_is_not_utf8_is_counted_with_a_note(real_runs: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """TensorBoard's reader cannot open such a path: the note says why and what to do, not an encoder's error."""
    real = copy_runs(real_runs, tmp_path)
    renamed = Path(os.fsdecode(os.fsencode(real[0]) + b"\xff"))
    real[0].rename(renamed)
    code, text = report(tmp_path, "--no-plots")
    assert code == 0
    status, reason = problem_rows(text)[f"{real[0]}\\udcff"]  # the byte, escaped in the report
    assert (status, reason) == ("done", "TensorBoard events: not read, since the folder's path is not UTF-8 (rename "
                                        "the folder to read them), no curves")
    assert "2 done, 0 failed" in text


@pytest.mark.parametrize(("record", "kind"), [
    ({"status": "failed"}, Run), ({"status": "failed", "error": ["x"]}, Run), ({"status": "duplicate"}, Problem),
    ({"status": "duplicate", "same_as": "/a"}, Problem), ({"status": None}, Problem), ({}, Problem)])
def test_read_folder_gives_a_run_or_a_problem(record: dict[str, Any], kind: type, tmp_path: Path) -> None:
    write(tmp_path, "summary.json", json.dumps(record))
    read = read_folder(tmp_path)
    assert isinstance(read, kind)
    if isinstance(read, Run):
        assert read.identity is None and read.reason


def test_identities_always_sort() -> None:
    """Groups are ordered by their identities; every field has one type, so any two compare."""
    identities = [Identity("digits", "mlp", "ste", 2, 2, 1), Identity("cifar10", "resnet20", "lsq", 32, 32, 30),
                  Identity("digits", "mlp", "ste", 2, 2, 0)]
    assert [i.epochs for i in sorted(identities)] == [30, 0, 1]


# --- Random records beside real runs ------------------------------------------------------------

KNOWN_KEYS = ("status", *IDENTITY_KEYS, *NUMBERS, "error", "overrides", "same_as", "run_dir", "config")
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["done", "failed", "duplicate", "ste", "mlp", "digits", "", "|", "a\nb", "$x$"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
NOT_A_NUMBER = st.one_of(st.text(max_size=6), st.booleans(), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                         st.sampled_from([math.nan, math.inf, -math.inf, -1, -1e-9, 1e300]))
NOT_AN_INTEGER = st.one_of(st.text(max_size=6), st.booleans(), st.none(), st.floats(),
                           st.lists(st.integers(), max_size=2))
NOT_A_NAME = st.one_of(st.none(), st.integers(), st.floats(), st.booleans(), st.lists(st.text(max_size=3), max_size=2),
                       st.sampled_from(["", "a b", "a|b", "$x$", "a\nb"]))
# Values a finished run's record cannot hold under each key.
WRONG = {**{key: NOT_A_NAME for key in ("method", "model", "dataset")},
         **{key: NOT_AN_INTEGER for key in ("bits_w", "bits_a", "seed", "epochs")},
         **{key: NOT_A_NUMBER for key in NUMBERS}, "test_acc": NOT_A_NUMBER | st.none(),
         "overrides": st.one_of(st.text(max_size=6), st.integers(), st.lists(st.integers(), min_size=1, max_size=2))}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def folder_contents(draw: Callable[..., Any], done: dict[str, Any], first_run: str) -> dict[str, Any]:
    """Files of one folder that holds no finished run of its own, and the statuses its row may have."""
    kind = draw(st.sampled_from(["garbage", "json", "broken_done", "failed", "duplicate", "unfinished"]))
    files: dict[str, bytes] = {}
    statuses = {"invalid"}
    if kind == "garbage":
        files["summary.json"] = draw(st.binary(max_size=40))
    elif kind == "json":
        value = draw(JSON | st.dictionaries(st.sampled_from(KNOWN_KEYS), JSON))
        files["summary.json"] = _json_bytes(value)
        if isinstance(value, dict) and value.get("status") in ("failed", "duplicate"):
            statuses = {value["status"], "invalid"}
    elif kind == "broken_done":
        record = dict(done)
        for key in draw(st.lists(st.sampled_from(list(WRONG)), min_size=1, max_size=3, unique=True)):
            record[key] = draw(WRONG[key])
        for key in draw(st.lists(st.sampled_from(KNOWN_KEYS[1:]), max_size=2)):
            record[key] = draw(JSON)
        files["summary.json"] = _json_bytes(record)
    elif kind == "failed":
        keys = draw(st.lists(st.sampled_from(KNOWN_KEYS[1:]), max_size=6, unique=True))
        files["summary.json"] = _json_bytes({"status": "failed", **{key: draw(JSON) for key in keys}})
        statuses = {"failed"}
    elif kind == "duplicate":
        same_as = draw(st.just(first_run) | JSON)
        keys = draw(st.lists(st.sampled_from(IDENTITY_KEYS), max_size=7, unique=True))
        files["summary.json"] = _json_bytes({"status": "duplicate", "same_as": same_as,
                                             **{key: draw(JSON) for key in keys}})
        statuses = {"duplicate", "invalid"}
    else:
        files["last.ckpt"] = draw(st.binary(max_size=20))
        statuses = {"unfinished"}
    for name in draw(st.lists(st.sampled_from(["events.out.tfevents.1.host.1.0", ".hydra/overrides.yaml",
                                                ".hydra/config.yaml"]), max_size=3, unique=True)):
        files[name] = draw(st.binary(max_size=30) | st.builds(lambda v: yaml.safe_dump(v).encode(), JSON))
    return {"files": files, "statuses": statuses, "kind": kind}


def check_random_folders(real_runs: dict[str, Path], data: st.DataObject, options: list[str]) -> None:
    """Beside the two real runs, 1 to 4 folders of random contents: the report ends normally, reports
    the real runs with their numbers and names every other folder with a reason."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        real = copy_runs(real_runs, root)
        folders = data.draw(st.lists(folder_contents(summary_of(real[0]), str(real[0])), min_size=1, max_size=4))
        for index, folder in enumerate(folders):
            for name, content in folder["files"].items():
                write(root / f"bad{index}", name, content)
        code, text = report(root, *options)
        assert code == 0
        check_real_runs_reported(root, text, real)
        rows = problem_rows(text)
        for index, folder in enumerate(folders):
            status, reason = rows[str(root / f"bad{index}")]
            assert status in folder["statuses"] and reason not in ("", "-"), (folder, status, reason)
        assert len(rows) == len(folders)


# Derandomized so CI sees the same examples every run; the slow variant explores further.
@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_records_beside_real_runs(real_runs: dict[str, Path], data: st.DataObject) -> None:
    options = data.draw(st.sampled_from([["--no-plots"], ["--no-plots", "--epochs", "1,3"],
                                         ["--no-plots", "--paired", "method=ste"]]))
    check_random_folders(real_runs, data, options)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_records_beside_real_runs_with_plots(real_runs: dict[str, Path], data: st.DataObject) -> None:
    check_random_folders(real_runs, data, ["--epochs", "1"])


NAMES = st.from_regex(r"[A-Za-z0-9_.+-]{1,8}", fullmatch=True)


@st.composite
def valid_done_record(draw: Callable[..., Any]) -> dict[str, Any]:
    """A finished run's record with any values the report accepts: names, bits 1-32, accuracies
    0-100, costs 0 to MAX_COST, optional numbers null or absent, any override lines."""
    record: dict[str, Any] = {"status": "done", "method": draw(NAMES), "model": draw(NAMES | st.just("mlp")),
                              "dataset": draw(NAMES | st.just("digits")), "bits_w": draw(st.integers(1, 32)),
                              "bits_a": draw(st.integers(1, 32)), "seed": draw(st.integers()),
                              "epochs": draw(st.integers(0, 10**9))}
    for key, (low, high) in NUMBERS.items():
        value = draw(st.floats(low, high) | st.integers(int(low), int(high)) if key == "test_acc" else
                     st.none() | st.floats(low, high) | st.just("absent"))
        if value != "absent":
            record[key] = value
    if record.get("best_test_acc") is not None:  # the final accuracy is one the best was taken over
        record["best_test_acc"] = max(record["best_test_acc"], record["test_acc"])
    record["overrides"] = draw(st.lists(st.builds("{}={}".format, st.sampled_from(["optim.lr", "x", "+tag"]),
                                                  st.text("a1.$|\\= \n", max_size=6)), max_size=2))
    return record


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(valid_done_record(), min_size=1, max_size=4))
def test_any_valid_records_are_reported_and_plotted(real_runs: dict[str, Path], records: list[dict[str, Any]]) -> None:
    """Records that fit, however odd their values, are counted as runs: tables, CSV and plots."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        real = copy_runs(real_runs, root)
        for index, record in enumerate(records):
            write(root / f"odd{index}", "summary.json", json.dumps(record))
        code, text = report(root)
        assert code == 0
        assert f": {len(records) + len(real)} done, 0 failed, 0 unfinished;" in text
        # Counted, with a note that no TensorBoard events (none written here) confirm the test accuracy.
        assert {status for status, reason in problem_rows(text).values() if not reason.startswith(EVENTS_NOTE)} == set()
        assert sum(int(row["runs"]) for row in csv_rows(root)) == len(records) + len(real)
        drawn = re.findall(r"^!\[(.+)\]\(\1\)$", (root / "report" / "report.md").read_text(), re.MULTILINE)
        for stem in ("accuracy_vs_bits", "accuracy_vs_gbops", "test_accuracy_curves"):  # one per model, data set
            assert any(name.startswith(stem) for name in drawn), (stem, drawn)
        for name in drawn:
            assert (root / "report" / name).read_bytes().startswith(PNG_MAGIC), name


@pytest.mark.parametrize(("config", "key", "text"), [
    ({"optim": {"lr": 0.01}}, "optim.lr", "0.01"), ({"trainer": {"grad_clip": None}}, "trainer.grad_clip", "null"),
    ({"quant": {"fold_bn": False}}, "quant.fold_bn", "false"), ({"method": {"name": "uniq"}}, "method.name", "uniq"),
    ({"sched": {"milestones": [2, 3]}}, "sched.milestones", None), ({"optim": {"lr": 0.01}}, "optim.lr.x", None),
    ({"optim": {"lr": 0.01}}, "optim", None), ({}, "init_from", None), ({"trainer": {"grad_clip": 1.0}},
    "trainer.grad_clip", "1"), ({"init_from": "${hydra:runtime.cwd}/outputs/x"}, "init_from", None)])
def test_a_default_is_spelled_as_an_override_would_be_or_not_taken(config: dict[str, Any], key: str,
                                                                    text: str | None) -> None:
    assert config_text(config, key) == text


@pytest.mark.parametrize(("typed", "spelled"), [
    ("1e-2", "0.01"), ("0.010", "0.01"), (".5", "0.5"), ("1.", "1"), ("1.0", "1"), ("+3", "3"), ("1_000", "1000"),
    ("-2", "-2"), ("1e3", "1000"), ("-Inf", "-inf"), ("True", "true"), ("FALSE", "false"), ("NULL", "null"),
    ("plain", "plain"), ("'2'", "2"), ('"a b"', "a b"), ("003", "003"), ("[2,3]", "[2,3]"), ("a,b", "a,b"),
    ("1e", "1e"), ("${x}", "${x}")])
def test_an_override_value_has_one_spelling(typed: str, spelled: str) -> None:
    assert canonical(typed) == spelled


def _edit_summary(folder: Path, **changes: Any) -> None:
    write(folder, "summary.json", json.dumps({**summary_of(folder), **changes}))


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda run: _edit_summary(run, test_acc=12.5),
     "summary.json: test_acc 12.5 is not the last test accuracy its TensorBoard events logged"),
    (lambda run: _edit_summary(run, method="lsq"), "summary.json: method lsq is not its .hydra/config.yaml's "
                                                   "method.name (ste): a record edited by hand, or copied"),
    (lambda run: _edit_summary(run, seed=7), "summary.json: seed 7 is not its .hydra/config.yaml's seed (1)"),
    (lambda run: _edit_summary(run, epochs=50), "summary.json: epochs 50 is not its .hydra/config.yaml's trainer"),
    (lambda run: _edit_summary(run, bits_w=8), "summary.json: bits_w 8 is not its .hydra/config.yaml's bits.w (2)"),
    (lambda run: write(run, ".hydra/overrides.yaml", "- seed=1\n- optim.lr=0.5\n"),
     ".hydra/overrides.yaml: optim.lr=0.5 is not its .hydra/config.yaml's optim.lr"),
    (lambda run: shutil.copy(run.parent / "seed0" / "summary.json", run / "summary.json"),
     "summary.json: seed 0 is not its .hydra/config.yaml's seed (1)"),  # another run's record copied in
    (lambda run: ((run / "summary.json").unlink(), os.mkfifo(run / "summary.json")),
     "summary.json: unreadable (OSError: summary.json is not a regular file)"),  # read, it would block
])
def test_a_record_that_disagrees_with_the_runs_other_records_is_refused(
        real_runs: dict[str, Path], tmp_path: Path, damage: Callable[[Path], Any], reason: str) -> None:
    copies = copy_runs(real_runs, tmp_path)
    for copy in copies:  # what Hydra writes beside a run the command line starts
        write(copy, ".hydra/config.yaml", yaml.safe_dump(load_checkpoint(copy / "last.ckpt")["config"]))
        write(copy, ".hydra/overrides.yaml", yaml.safe_dump(summary_of(copy)["overrides"]))
    damage(copies[1])
    code, text = report(tmp_path)
    assert code == 0 and ": 1 done," in text
    status, shown = problem_rows(text)[str(copies[1])]
    assert status == "invalid" and shown.startswith(reason), shown


def test_a_finished_run_without_events_is_counted_with_a_note_and_a_duplicate_of_nothing_is_refused(
        real_runs: dict[str, Path], tmp_path: Path) -> None:
    copies = copy_runs(real_runs, tmp_path)
    for events in copies[1].glob("events.out.tfevents.*"):
        events.unlink()
    write(tmp_path / "dup", "summary.json", json.dumps({"status": "duplicate", "same_as": str(tmp_path / "gone")}))
    code, text = report(tmp_path, "--no-plots")
    assert code == 0 and ": 2 done," in text
    rows = problem_rows(text)
    assert rows[str(copies[1])] == ("done", "TensorBoard events: no test accuracy logged, so summary.json's "
                                            "test_acc is checked against nothing")
    assert rows[str(tmp_path / "dup")][0] == "invalid" and "which is not there (moved or removed?)" in rows[
        str(tmp_path / "dup")][1]


def test_a_report_replaces_its_own_files_but_no_file_of_the_users(real_runs: dict[str, Path], tmp_path: Path) -> None:
    copies = copy_runs(real_runs, tmp_path)
    assert report(tmp_path, "--no-plots")[0] == 0
    assert report(tmp_path, "--no-plots")[0] == 0  # its own report, written again
    write(copies[0], "report.md", "my notes on this run\n")
    with pytest.raises(QnnrunError, match=r"report.md was not written by qnnrun report .*--out DIR"):
        main([str(copies[0]), "--no-plots"])  # the default --out: the run folder itself
    assert (copies[0] / "report.md").read_text() == "my notes on this run\n"
    assert not (copies[0] / "report.csv").exists()
    # A plot of the user's own: under another name it is no report's business; under the name of a plot
    # this report draws, beside a report.md that does not show it (written with --no-plots), refused.
    write(copies[1], "accuracy_vs_bits_mine.png", "mine")
    main([str(copies[1]), "--no-plots"])  # not refused (it was: any accuracy_vs_bits*.png)
    write(copies[1], "accuracy_vs_bits.png", "mine too")
    with pytest.raises(QnnrunError, match=r"accuracy_vs_bits.png was not written by qnnrun report"):
        main([str(copies[1])])
    assert (copies[1] / "accuracy_vs_bits.png").read_text() == "mine too"
    assert (copies[1] / "accuracy_vs_bits_mine.png").read_text() == "mine"


def test_a_last_epoch_logged_twice_by_a_resume_still_confirms_the_record(real_runs: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """A run killed after logging its last epoch but before saving it logs that epoch again when resumed."""
    from torch.utils.tensorboard import SummaryWriter

    copies = copy_runs(real_runs, tmp_path)
    summary = summary_of(copies[1])
    with SummaryWriter(str(copies[1])) as writer:  # the first try of the last epoch, logged after the real one
        writer.add_scalar(CURVE_TAG, summary["test_acc"] + 3.0, summary["epochs"])
    code, text = report(tmp_path, "--no-plots")
    assert code == 0 and ": 2 done," in text and str(copies[1]) not in problem_rows(text)


def test_a_report_stopped_part_way_is_written_again(real_runs: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import qnnrun.report as report_module

    copy_runs(real_runs, tmp_path)
    monkeypatch.setitem(report_module.PLOTS, "accuracy_vs_gbops.png",  # stopped after report.csv and a plot
                        lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        report(tmp_path)
    assert (tmp_path / "report" / "report.csv").exists()
    monkeypatch.undo()
    assert report(tmp_path)[0] == 0  # the stopped report's plots are its own: its report.md named them


def test_the_epoch_table_rounds_a_final_mean_as_the_main_table(tmp_path: Path) -> None:
    """TensorBoard keeps float32: 63.82 and 63.39 came back 63.8199997 and 63.3899994, whose mean
    printed 63.60 in the By-epoch table beside 63.61 (the mean of summary.json's) in the main one."""
    from report_files import write_run

    from qnnrun.report import build_report

    for seed, acc in enumerate((63.82, 63.39)):
        write_run(tmp_path / "runs" / f"s{seed}", "ste", "fp", "fp", seed=seed, test_acc=acc)
    text = build_report([tmp_path / "runs"], tmp_path / "out", plots=False, epochs=[3])
    assert "| 63.61 ± 0.30 |" in text.split("## By epoch")[0]
    assert "| 63.61 ± 0.30 |" in text.split("## By epoch")[1]
