"""The ``qnnrun`` command: help, config printing, sweeps, eval, bops, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from hydra_utils import run_cli

from qnnrun.cli import check_group_choices


@pytest.fixture
def qnnrun(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    return lambda *args: run_cli(list(args), tmp_path, capsys, monkeypatch)


def test_help_lists_groups_and_options(qnnrun) -> None:
    code, out, _ = qnnrun("train", "--help")
    assert code == 0
    listing = out.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = dict(line.split(": ", 1) for line in listing.splitlines() if ": " in line)
    assert {"fp", "ste"} <= set(groups["method"].split(", "))
    assert groups["bits"].split(", ") == ["1", "2", "3", "4", "5", "6", "7", "8", "32"]  # numeric order
    assert "experiment_method" not in groups  # an internal group, not a user's choice
    assert {"digits", "mnist", "cifar10", "imagefolder"} <= set(groups["dataset"].split(", "))
    assert {"mlp", "resnet20", "resnet18", "mobilenet_v2"} <= set(groups["model"].split(", "))


def test_usage_and_unknown_command(qnnrun) -> None:
    code, out, _ = qnnrun()
    assert code == 2 and "commands:" in out
    code, _, err = qnnrun("fit")
    assert code == 1 and "unknown command 'fit'" in err and "train" in err  # bad input: 1, as on every command


def test_cfg_job_prints_the_composed_config(qnnrun) -> None:
    code, out, _ = qnnrun("train", "--cfg", "job", "bits=2", "model=lenet5")
    assert code == 0
    assert "name: lenet5" in out and "w: 2" in out and "a: 2" in out


def test_train_run_then_eval(qnnrun, tmp_path: Path) -> None:
    code, _, err = qnnrun("train", "trainer=quick", "hydra.run.dir=outputs/run")
    assert code == 0, err
    summary = json.loads((tmp_path / "outputs/run/summary.json").read_text())
    assert summary["epochs"] == 3 and summary["method"] == "ste"
    assert (tmp_path / "outputs/run/.hydra/config.yaml").is_file()
    code, out, err = qnnrun("eval", "checkpoint=outputs/run/last.ckpt")
    assert code == 0, err
    assert f"top-1 {summary['test_acc']:.2f}%" in out


def _write_imagefolder(root: Path) -> None:
    """A tiny two-class imagefolder tree: 4 training and 2 test images of 8x8 per class."""
    from PIL import Image

    for split, count in (("train", 4), ("val", 2)):
        for label, value in (("dark", 30), ("light", 220)):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (value + i,) * 3).save(root / split / label / f"{i}.png")


def test_eval_export_and_sensitivity_read_the_runs_own_data_folder(qnnrun, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A run trained with paths.data_dir=DIR is read from DIR by eval, export check=true and sensitivity
    without DIR given again (the test's QNNRUN_DATA points elsewhere); a paths.data_dir given wins."""
    _write_imagefolder(tmp_path / "elsewhere/tiny")
    code, _, err = qnnrun("train", "dataset=imagefolder", "dataset.root=tiny", "dataset.image_size=8",
                          "dataset.batch_size=4", "dataset.num_workers=0", "paths.data_dir=elsewhere",
                          "trainer.epochs=1", "trainer.progress=false", "hydra.run.dir=run")
    assert code == 0, err
    assert torch.load(tmp_path / "run/last.ckpt", weights_only=True)["config"]["paths"]["data_dir"] == str(
        tmp_path / "elsewhere")  # stored absolute: typed relative, it names the same folder from anywhere
    (tmp_path / "other").mkdir()
    code, out, err = run_cli(["eval", "checkpoint=../run"], tmp_path / "other", capsys, monkeypatch)
    assert code == 0 and "on imagefolder test (4 images)" in out, err
    code, out, err = qnnrun("export", "checkpoint=run", "format=onnx", "check=true")
    assert code == 0 and "of 4 test predictions differ" in out, err
    code, out, err = qnnrun("sensitivity", "checkpoint=run", "bits=4")
    assert code == 0 and "written:" in out, err
    code, _, err = qnnrun("eval", "checkpoint=run", f"paths.data_dir={tmp_path / 'nowhere'}")
    assert code == 1 and str(tmp_path / "nowhere") in err


def test_saved_run_paths_order() -> None:
    """The command line's folders, else the run's own where its data folder exists, else $QNNRUN_DATA;
    the run's cache goes with the run's data folder only."""
    from omegaconf import OmegaConf

    from qnnrun.evaluate import saved_run_paths

    here = Path(__file__).parent
    saved = OmegaConf.create({"paths": {"data_dir": str(here), "cache_dir": str(here / "report")}})
    none = OmegaConf.create({"data_dir": None, "cache_dir": None})
    assert saved_run_paths(saved, none) == (here, here / "report")
    gone_cache = OmegaConf.create({"paths": {"data_dir": str(here), "cache_dir": "/scratch/gone"}})
    assert saved_run_paths(gone_cache, none) == (here, here / ".qnnrun-cache")  # a cluster's, not here
    given = OmegaConf.create({"data_dir": "/given", "cache_dir": None})
    assert saved_run_paths(saved, given) == (Path("/given"), Path("/given/.qnnrun-cache"))
    assert saved_run_paths(saved, OmegaConf.create({"data_dir": None, "cache_dir": "/c"})) == (here, Path("/c"))
    gone = OmegaConf.create({"paths": {"data_dir": "/no/such/folder", "cache_dir": "/cache/own"}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QNNRUN_DATA", "/env/data")
        assert saved_run_paths(gone, none) == (Path("/env/data"), Path("/env/data/.qnnrun-cache"))
        assert saved_run_paths(OmegaConf.create({}), none)[0] == Path("/env/data")  # a config saved without paths


def test_multirun_sweep_writes_one_folder_per_job(qnnrun, tmp_path: Path) -> None:
    code, _, err = qnnrun("train", "-m", "method=fp,ste", "bits=2,4", "trainer.epochs=1", "trainer.progress=false",
                          "hydra.sweep.dir=sweep")
    assert code == 0, err
    # Named by what tells the jobs apart, in the order of the sweep: threads and progress left out.
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "0_fp", "1_fp", "2_ste_w2a2", "3_ste_w4a4"]
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert len(summaries) == 4
    # The float job at bits=4 is the bits=2 one's run: recorded as a pointer to it, not trained again
    # (at the widths fp runs at, 32, whatever bits says).
    assert sorted((s["status"], s["method"], s["bits_w"]) for s in summaries) == [
        ("done", "fp", 32), ("done", "ste", 2), ("done", "ste", 4), ("duplicate", "fp", 32)]


def test_a_sweep_jobs_folder_is_a_path_as_given(qnnrun, tmp_path: Path) -> None:
    """The job folders of sweeps made before the readable names (``<n>_<every override>``) hold '=', ','
    and quotes, which Hydra's override grammar rejects unquoted; init_from, resume and checkpoint take
    them as typed."""
    code, _, err = qnnrun("train", "-m", "method=fp", "bits=32", "trainer.epochs=1", "trainer.progress=false",
                          "hydra.sweep.dir=sweep", "hydra.sweep.subdir=${hydra.job.num}_${hydra.job.override_dirname}")
    assert code == 0, err
    job = f"sweep/{next((tmp_path / 'sweep').glob('0_*')).name}"
    assert "=" in job and "," in job and "'" in job, job
    code, _, err = qnnrun("train", "method=ste", "bits=2", "trainer.epochs=0", f"init_from={job}",
                          "hydra.run.dir=tuned")
    assert code == 0, err
    assert json.loads((tmp_path / "tuned/summary.json").read_text())["test_acc"] > 50  # started from the float net
    code, out, err = qnnrun("eval", f"checkpoint={job}/last.ckpt")
    assert code == 0 and "top-1" in out, err
    code, _, err = qnnrun("train", "trainer.epochs=2", "extend=true", "trainer.progress=false", f"resume={job}")
    assert code == 0 and json.loads((tmp_path / job / "summary.json").read_text())["epochs"] == 2, err


def test_failed_sweep_job_does_not_stop_the_sweep(qnnrun, tmp_path: Path) -> None:
    code, _, err = qnnrun("train", "-m", "dataset=mnist,digits", "trainer.epochs=1", "trainer.progress=false",
                          "hydra.sweep.dir=sweep")
    assert code == 1 and "MNIST not found" in err and "1 job(s) of the sweep failed" in err
    statuses = sorted(json.loads(p.read_text())["status"] for p in (tmp_path / "sweep").glob("*/summary.json"))
    assert statuses == ["done", "failed"]  # the failed job leaves a record (qnnrun/sweep.py)


def test_the_integer_model_of_a_float_run_names_the_option_that_asked_for_it(qnnrun) -> None:
    """eval's backend=int said "format=int needs a run with quantized weights", an option of export."""
    assert qnnrun("train", "method=fp", "trainer.epochs=1", "trainer.progress=false", "hydra.run.dir=fp")[0] == 0
    for command, option in (("eval", "backend=int"), ("export", "format=int")):
        code, _, err = qnnrun(command, "checkpoint=fp", option)
        assert code == 1 and err.strip() == (f"qnnrun: error: method=fp has no quantized weights: {option} needs a run "
                                             f"with quantized weights (valid: every method but fp, at weight widths "
                                             f"1-8)"), err


def test_counts_of_one_are_singular_and_an_empty_list_is_said_so(qnnrun) -> None:
    """It said "1 runs", "1 integer layers" and "the keys the runs set are none"."""
    assert qnnrun("train", "trainer.epochs=1", "trainer.progress=false", "hydra.run.dir=run")[0] == 0
    code, out, err = qnnrun("export", "checkpoint=run")  # the MLP's middle layer: first and last stay float
    assert code == 0 and "bytes): 1 integer layer, packed weights" in out, err
    code, out, err = qnnrun("report", "run", "--no-plots")
    assert code == 0 and "1 run under run: 1 done, 0 failed, 0 unfinished; 1 group (" in out, err
    code, _, err = qnnrun("report", "run", "--no-plots", "--ignore", "seeed")
    assert code == 1 and err.strip() == "qnnrun: error: --ignore seeed: no run sets it; the runs set no override key"


def test_report_paths_and_epochs_as_typed(qnnrun, tmp_path: Path) -> None:
    """A folder given twice is one (the headline named it twice); --epochs 10,1,10 is epochs 1 and 10; a
    missing path is said not to exist (it was "not a folder")."""
    assert qnnrun("train", "trainer.epochs=2", "trainer.progress=false", "hydra.run.dir=run")[0] == 0
    code, out, err = qnnrun("report", "run", "run/", "--no-plots", "--epochs", "2,1,2")
    assert code == 0 and "1 run under run: 1 done" in out, err
    assert "| test % (train %) at epoch | 1             | 2             |" in out
    (tmp_path / "a_file").write_text("mine")
    for path, problem in (("nowhere", "does not exist"), ("a_file", "is not a folder")):
        code, _, err = qnnrun("report", path, "--no-plots")
        assert code == 1 and err.strip() == (f"qnnrun: error: {path} {problem}: give run folders, sweep folders or "
                                             f"outputs/")


def test_bops_table(qnnrun) -> None:
    code, out, err = qnnrun("bops", "model=resnet20", "dataset=cifar10", "bits=2")
    assert code == 0, err
    assert "layer1.0.conv1" in out and "W2/A2" in out and "compression" in out


@pytest.mark.parametrize(
    "args,expected",
    [
        (["bits.w=9"], "bits.w=9 is not a valid bit width: valid are integers 1-8, or 32"),
        (["bits.a=2.5"], "bits.a=2.5 is not a valid bit width"),
        (["bits.w=two"], "bits.w='two' is not a valid bit width"),
        (["trainer.epochs=-1"], "trainer.epochs=-1 is not valid: expected an integer >= 0"),
        (["trainer.log_every_steps=-5"], "trainer.log_every_steps=-5 is not valid: expected an integer >= 0"),
        (["trainer.recompute_quant=maybe"], "trainer.recompute_quant='maybe' is not valid: valid are true, false"),
        (["quant.first_layer=4"], "quant.first_layer=4 is not valid: valid are fp, 8, same"),
        (["dataset=mnist"], "MNIST not found"),
        (["resume=missing.ckpt"], "resume=missing.ckpt: checkpoint not found: missing.ckpt"),
        (["init_from=missing.ckpt"], "init_from=missing.ckpt: checkpoint not found"),
        # Checked before the data set is read (MNIST is absent here), and a preset's user learns where the
        # command that makes its float checkpoint is.
        (["dataset=mnist", "init_from=missing.ckpt"], "init_from=missing.ckpt: checkpoint not found"),
        (["experiment=nbn_cifar10", "hydra.mode=RUN", "method=nbn", "bits=3"],
         "experiment=nbn_cifar10 starts from a float run: the command that makes it is in the header of "
         "conf/experiment/nbn_cifar10.yaml"),
        (["init_from=3"], "init_from=3 is not valid: expected null or a checkpoint path"),
        # Errors that did not name the option typed ("checkpoint not found: /nope", "device 'gpu' is not valid"),
        # or named last.ckpt for ./last.ckpt.
        (["trainer.distill.teacher=/nope"], "trainer.distill.teacher=/nope: checkpoint not found: /nope (give"),
        (["trainer.device=gpu"], "trainer.device='gpu' is not valid: valid are auto, cpu, cuda, cuda:N"),
        (["init_from=."], "init_from=.: checkpoint not found: ./last.ckpt (give"),
        (["method=[0]"], "method=[0] is not valid: choose one of"),
        (["model.widths=[0]"], "model.widths=[0] is not valid: expected a list of positive integers"),
        (["model.widths=[8]", "model.dropout=2"], "model.dropout=2 is not valid"),
    ],
)
def test_bad_input_is_one_line_error(qnnrun, args: list[str], expected: str) -> None:
    code, _, err = qnnrun("train", "trainer.epochs=1", *args)
    assert code == 1
    assert expected in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("qnnrun: error")]) == 1


@pytest.mark.parametrize(
    "command,args,expected",
    [
        ("train", ["bits=9"], "bits=9 is not valid: choose one of 1, 2, 3, 4, 5, 6, 7, 8, 32"),
        ("train", ["method=magic"], "method=magic is not valid: choose one of aqe, bnn, dorefa, fbf, fp, lbl,"),
        ("train", ["-m", "method=ste,magic"], "method=magic is not valid: choose one of aqe,"),
        ("train", ["model=alexnet"], "model=alexnet is not valid: choose one of aqe_convnet, lenet5, mlp,"),
        ("train", ["experiment=sq_imagenet"], "experiment=sq_imagenet is not valid: choose one of aqe_cifar10,"),
        ("bops", ["dataset=svhn"], "dataset=svhn is not valid: choose one of cifar10, cifar100, digits,"),
    ],
)
def test_unknown_group_option_is_one_line_listing_valid_options(qnnrun, command: str, args: list[str],
                                                                expected: str) -> None:
    code, _, err = qnnrun(command, *args)
    assert code == 1
    assert err.startswith("qnnrun: error: ") and expected in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("command", "args", "expected"), [
    ("eval", ["checkpoint=run", "junkword"], "'junkword' is not an override: give KEY=VALUE"),
    ("eval", ["checkpoint=run", "--chekpoint"], "--chekpoint is not an option of qnnrun eval: options are KEY=VALUE "
                                                "overrides and Hydra's flags, --cfg,"),  # usage text, exit 2
    ("train", ["--cfg", "jobs"], "argument --cfg/-c: invalid choice: 'jobs' (choose from 'job', 'hydra', 'all')"),
    ("trian", [], "unknown command 'trian': valid commands are train, eval, bops, export, sensitivity, report"),  # 2
    # argparse's "unrecognized arguments: --ignroe init_from" named no flag.
    ("report", ["run", "--ignroe", "init_from"], "--ignroe is not an option of qnnrun report: options are PATH... and "
                                                 "--help, --out, --no-plots, --ignore, --epochs, --paired"),
    ("bops", ["-m", "model=mlp,lenet5"], "-m (a sweep) is for qnnrun train: qnnrun bops takes one value per "
                                         "option"),  # it made a sweep folder, exit 0
    ("eval", ["checkpoint=a,b"], "checkpoint=a,b: several values without -m: qnnrun eval takes one value"),
    ("train", ["trainer.epochs=1,2"], "trainer.epochs=1,2: several values without -m: run each value with "
                                      "qnnrun train -m"),  # Hydra's "Ambiguous value" in six lines
    ("sensitivity", ["checkpoint=x", "bits=2,4"], "bits=2,4: several values without -m: run each value with qnnrun "
                                                  "sensitivity -m"),  # the values as typed, not bits='2','4'
    ("export", ["checkpoint=run", "output=out/"], "output=out/ names a folder: give a file path"),  # wrote a file
    ("eval", ["checkpoint="], "checkpoint=: the checkpoint path is empty: give a .ckpt file or a run folder"),
    ("eval", ["checkpoint=."], "checkpoint=.: checkpoint not found: ./last.ckpt (give"),  # it said last.ckpt
    ("export", ["checkpoint=run", "format=onnxx"], "format='onnxx' is not valid: valid are int, onnx"),
    # It wrote .hydra/ and train.log into the working folder, its hydra.run.dir, before the error.
    ("train", ["resume=."], "resume=.: checkpoint not found: ./last.ckpt (give"),
    ("train", ["-m", "--cfg", "job"], "-m and --cfg cannot be given together: Hydra does one of"),  # a traceback
    ("train", ["--cfg", "job", "experiment=smoke", "method=ste,lsq"],
     "method=ste,lsq: several values with --cfg, which prints one job's config"),  # "Ambiguous value", 5 lines
    ("train", ["-m", "hydra.sweep.dir=x,y"], "hydra.sweep.dir=x,y: Hydra's own settings take one value"),
    # inf passed every check without an upper bound, and the run failed at its first step.
    ("train", ["trainer.distill.teacher=x", "trainer.distill.weight=inf"],
     "trainer.distill.weight=inf is not valid: expected a finite number >= 0"),
    ("train", ["optim.lr=nan"], "optim.lr=nan is not valid: expected a finite number > 0"),
    ("train", ["-m", "hydra/launcher=basic,joblib"],  # Hydra's "Sweeping over Hydra's configuration", exit 0
     "hydra/launcher=basic,joblib: Hydra's own settings take one value"),
    # It wrote .hydra/ and train.log into the working folder, then removed that folder when it held nothing else.
    ("train", ["resume=''"], "resume=: the checkpoint path is empty: give a .ckpt file or a run folder")])
def test_command_line_mistakes_are_one_line_and_leave_nothing(qnnrun, tmp_path: Path, command: str,
                                                              args: list[str], expected: str) -> None:
    if command == "export":
        assert qnnrun("train", "trainer.epochs=1", "hydra.run.dir=run")[0] == 0
    before = set(tmp_path.rglob("*"))
    code, _, err = qnnrun(command, *args)
    assert code == 1 and err.startswith(f"qnnrun: error: {expected}") and len(err.strip().splitlines()) == 1, err
    assert tmp_path.is_dir() and set(tmp_path.rglob("*")) == before


def test_group_choices_from_the_config_folder_and_null_pass_the_check() -> None:
    check_group_choices(["method=ste,lsq", "bits=2,'4'", "experiment=null", "seed=1,2",
                         "hydra/launcher=submitit_local"])  # a plugin's option, not in conf/
    check_group_choices(["method=mine", "hydra.searchpath=[file://my_conf]"])  # options Hydra may find there


@pytest.mark.parametrize(("preset", "args", "expected"), [
    ("trainer:\n  epochz: 3\n", [], "In 'experiment/mine': Key 'epochz' not in 'TrainerConf' (trainer.epochz)"),
    ("defaults:\n  - override /method: nosuch\n", [], "method=nosuch is not valid: choose one of aqe,"),
    ("trainer:\n  epochs: 1\n", ["trainer.epoch=3"], "trainer.epoch=3: no such option; did you mean trainer.epochs?"),
    ("trainer:\n  epochs: 1\n", ["experiment=minee"], "experiment=minee is not valid: choose one of aqe_cifar10, "
                                                       "baselines_cifar10, bnn_cifar10, bnn_mnist, mine, mp_search"),
    # A dimension the preset has, given a sweep value: Hydra sweeps none of its own settings.
    ("defaults:\n  - mp_search\n  - _self_\nhydra:\n  sweeper:\n    params:\n      seed: choice(0, 1)\n",
     ["hydra.sweeper.params.seed=choice(0,2)"], "hydra.sweeper.params.seed=choice(0,2): give seed=choice(0,2) on its "
                                                "own, which the sweeper reads as a dimension")])
def test_a_preset_of_ones_own_on_the_searchpath_gets_the_same_one_line_checks(
        qnnrun, tmp_path: Path, preset: str, args: list[str], expected: str) -> None:
    """Hydra printed these in several lines: the command's checks were skipped with hydra.searchpath."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(f"# @package _global_\n{preset}")
    code, _, err = qnnrun("train", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=mine", *args)
    assert code == 1 and err.startswith(f"qnnrun: error: {expected}"), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()


def test_corrupt_checkpoint_is_one_line_error(qnnrun, tmp_path: Path) -> None:
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint at all")
    code, _, err = qnnrun("eval", "checkpoint=bad.ckpt")
    assert code == 1 and "bad.ckpt is unreadable" in err and "Traceback" not in err
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.ckpt")
    code, _, err = qnnrun("eval", "checkpoint=other.ckpt")
    assert code == 1 and "not a qnnrun checkpoint" in err
    code, _, err = qnnrun("eval")
    assert code == 1 and "needs checkpoint=PATH" in err


def test_a_flipped_bit_in_a_checkpoint_is_refused_not_loaded(qnnrun, tmp_path: Path) -> None:
    """torch.load does not check the CRC-32 that torch.save stores for each archive member: a bit
    flipped in a weight loaded silently as another weight."""
    weights = torch.arange(256, dtype=torch.float32)
    torch.save({"weights": weights}, tmp_path / "flipped.ckpt")
    data = bytearray((tmp_path / "flipped.ckpt").read_bytes())
    at = data.index(weights.numpy().tobytes()) + 500
    data[at] ^= 0x10
    (tmp_path / "flipped.ckpt").write_bytes(bytes(data))
    code, _, err = qnnrun("eval", "checkpoint=flipped.ckpt")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "flipped.ckpt is corrupt: its member flipped/data/0 fails its CRC-32 check" in err


def test_malicious_pickle_is_refused_and_not_executed(qnnrun, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 1, "epoch": 1, "config": {}, "model": Exploit()}, tmp_path / "evil.ckpt")
    code, _, err = qnnrun("eval", "checkpoint=evil.ckpt")
    assert code == 1 and "refused by the safe loader" in err
    assert not marker.exists()


def test_installed_console_script_trains(tmp_path: Path) -> None:
    """The real entry point, as a user runs it (a separate process)."""
    env = {**os.environ, "QNNRUN_DATA": str(tmp_path / "data")}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(["qnnrun", "train", "trainer.epochs=1", "trainer.progress=false", "hydra.run.dir=run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run/summary.json").read_text())["status"] == "done"
    bad = subprocess.run(["qnnrun", "train", "bits.w=0"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip() == (
        "qnnrun: error: bits.w=0 is not a valid bit width: valid are integers 1-8, or 32 for float")


def test_shell_completion_completes_commands_and_overrides(qnnrun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMP_LINE", "qnnrun tr")
    assert qnnrun("-sc", "query=bash")[1].split() == ["train"]
    monkeypatch.setenv("COMP_LINE", "qnnrun train method=")
    assert {"method=fp", "method=ste"} <= set(qnnrun("-sc", "query=bash")[1].split())
    # The README's install line prints the script that asks `qnnrun -sc query=bash` above.
    code, out, err = qnnrun("train", "--shell-completion", "install=bash")
    assert code == 0 and "complete -o nospace -o default -F hydra_bash_completion qnnrun" in out, err


@pytest.mark.parametrize(
    "command,args,expected",
    [
        ("train", ["trainer.epoch=3"], "trainer.epoch=3: no such option; did you mean trainer.epochs?"),
        ("train", ["optim.lrr=0.1"], "optim.lrr=0.1: no such option; did you mean optim.lr?"),
        ("train", ["experiment=mp_search", "hydra.sweeper.params.search.features_4=choice(2,4)"],
         "no such option; 'search.features_4' is one key of hydra.sweeper.params, which a dotted path cannot "
         "reach: give 'hydra.sweeper.params={search.features_4: \"choice(2,4)\"}'"),  # it suggested the key typed
        # A new dimension: Hydra refuses choice() under hydra. (with + too), or printed a traceback.
        ("train", ["experiment=mp_search", "hydra.sweeper.params.seed=choice(0,1)"],
         "hydra.sweeper.params.seed=choice(0,1): the sweep has no dimension seed; give seed=choice(0,1) on its own"),
        ("train", ["-m", "+hydra.sweeper.params.optim.lr=0.1,0.2"],
         "the sweep has no dimension optim.lr; give optim.lr=0.1,0.2 on its own"),
        ("train", ["experiment=mp_search", "+hydra.sweeper.params.optim.lrr=choice(0.1,0.2)"],
         "optim.lrr is not an option of qnnrun train, so no run would read it; did you mean optim.lr?"),
        ("train", ["methd=ste"], "methd=ste: no such option; did you mean method?"),
        ("train", ["-m", "method=fp,ste", "trainer.epoch=1"], "trainer.epoch=1: no such option; did you mean"),
        ("train", ["method=lsq", "method.act_int=mse"], "did you mean method.act_init?"),
        ("bops", ["model.widht=3"], "model.widht=3: no such option; did you mean model.widths?"),
        ("eval", ["checkpoint=x", "devcie=cpu"], "devcie=cpu: no such option; did you mean device?"),
        # A group of qnnrun train that eval and export do not read: it suggested the very key typed ("bits='2': no
        # such option; did you mean bits?").
        ("eval", ["checkpoint=x", "bits=2"], "bits=2: qnnrun eval has no option bits (it runs the checkpoint's own "
                                             "model, method and bits); its options are checkpoint, device, backend, "
                                             "paths.data_dir, paths.cache_dir and the group dataset"),
        ("eval", ["checkpoint=x", "method=ste"], "method=ste: qnnrun eval has no option method (it runs"),
        ("export", ["checkpoint=x", "model=resnet20"], "model=resnet20: qnnrun export has no option model (it runs the "
                                                       "checkpoint's own model, method and bits); its options are "
                                                       "checkpoint, format, output, device, check, paths.data_dir,"),
        ("export", ["checkpoint=x", "bits.w=2"], "bits.w=2: qnnrun export has no option bits (it runs"),
        # Hydra's advice for a typo, +key, would train the default 30 epochs without a word.
        ("train", ["+trainer.epoch=1"], "+trainer.epoch=1: trainer.epoch is not an option of qnnrun train, no code "
                                        "would read it; did you mean trainer.epochs?"),
        ("train", ["method=lsq", "+method.act_int=mse"], "method.act_int is not an option"),
        ("train", ["hydra/launcher=foo"], "hydra/launcher=foo is not valid: choose one of basic, joblib, local,"),
        ("train", ["-m", "hydra/sweeper=foo"], "hydra/sweeper=foo is not valid: choose one of basic"),
        ("train", ["sched.warmup_epochs=-3"], "sched.warmup_epochs=-3 is not valid: expected a number >= 0"),
        ("train", ["optim.momentum=1.5"], "optim.momentum=1.5 is not valid: expected a number in [0, 1)"),
        ("train", ["optim=adam", "optim.betas=[1.2,0.9]"], "optim.betas[0]=1.2 is not valid"),
        ("train", ["optim.weight_decay=-1"], "optim.weight_decay=-1 is not valid"),
        ("train", ["sched=step", "sched.milestones=[5,2]"], "sched.milestones=[5, 2] is not valid"),
        ("train", ["trainer.label_smoothing=1"], "trainer.label_smoothing=1 is not valid"),
        ("train", ["trainer.grad_clip=-1"], "trainer.grad_clip=-1 is not valid"),
        ("train", ["trainer.compile=2"], "trainer.compile=2 is not valid: valid are true, false"),
        ("train", ["quant.per_channel=x"], "quant.per_channel='x' is not valid: valid are true, false"),
        ("train", ["dataset.crop_padding=-2"], "dataset.crop_padding=-2 is not valid: expected an integer >= 0"),
        ("train", ["dataset.std=[0]"], "dataset.std[0]=0 is not valid: expected a number > 0"),
        ("eval", ["checkpoint=x", "dataset=digits", "dataset.hflip=2"], "dataset.hflip=2 is not valid"),
        # One meaning per model option name: ResNet widths are channels, VGG widths a multiplier.
        ("bops", ["model=resnet20", "model.width=0.25"], "model.width=0.25 is not valid: expected a positive integer"),
        ("bops", ["model=vgg_small", "model.width_mult=0"], "model.width_mult=0 is not valid: expected a multiplier"),
        ("bops", ["model=vgg_small", "model.width=0.5"], "model.width=0.5: no such option"),
        # Hydra's grammar errors name the override and the way out.
        ("train", ["hydra.run.dir=/tmp/a=b"], "hydra.run.dir=/tmp/a=b is not an override Hydra can read (mismatched "
                                              "input '=' expecting <EOF>); a value that holds =, spaces, commas or "
                                              "brackets as text needs quotes, e.g. hydra.run.dir='/tmp/a=b'"),
        ("train", ["-m", "seed=0,1", "optim.lr=[1"], "optim.lr=[1 is not an override Hydra can read"),
        # Quoting the whole value, as the general hint said, gave 'expected a mapping'.
        ("bops", ['quant.layer_bits={"features.1": 8}'], "a mapping's keys are written without quotes, a glob's "
                                                         "brackets escaped with \\, e.g. quant.layer_bits={features.1"),
        # A preset's option of another choice of a group: the key is named.
        ("train", ["-m", "experiment=mp_search", "hydra/sweeper=basic"],
         "In 'experiment/mp_search': Key 'n_trials' not in 'BasicSweeperConf' (hydra.sweeper.n_trials)"),
    ],
)
def test_mistyped_keys_and_senseless_values_are_one_line_and_leave_nothing(qnnrun, tmp_path: Path, command: str,
                                                                          args: list[str], expected: str) -> None:
    code, out, err = qnnrun(command, *args, *(["trainer.epochs=1"] if command == "train" else []))
    assert code == 1 and "Traceback" not in err, err
    assert err.startswith("qnnrun: error: ") and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "outputs").exists() and "epoch 1/" not in out  # nothing trained, no folder


def test_model_options_have_one_meaning_across_models() -> None:
    """An option name means the same thing (the same type and range) for every model that takes it."""
    import inspect

    from qnnrun.models import DATA_KWARGS, MODELS

    meanings: dict[str, set[str]] = {}
    for builder in MODELS.values():
        for parameter in inspect.signature(builder).parameters.values():
            if parameter.name not in DATA_KWARGS:
                meanings.setdefault(parameter.name, set()).add(str(parameter.annotation))
    assert {name: kinds for name, kinds in meanings.items() if len(kinds) > 1} == {}
    assert meanings["width"] == {"int"} and meanings["width_mult"] == {"float"}


def test_a_saved_config_with_a_renamed_model_option_still_builds() -> None:
    from qnnrun.models import build_model

    old = build_model({"name": "vgg_small", "width": 0.125, "fc_width": 16}, in_channels=3, num_classes=10,
                      image_size=32)
    new = build_model({"name": "vgg_small", "width_mult": 0.125, "fc_width": 16}, in_channels=3, num_classes=10,
                      image_size=32)
    assert [p.shape for p in old.parameters()] == [p.shape for p in new.parameters()]


def test_special_or_unwritable_output_paths_are_refused(qnnrun, tmp_path: Path) -> None:
    """export's output, report's --out and the run folder: a special file (here a link to /dev/null)
    or a folder is never replaced by a regular file, and each is one line."""
    (tmp_path / "null").symlink_to(os.devnull)
    (tmp_path / "a_file").write_text("mine")
    code, _, err = qnnrun("train", "trainer.epochs=1", "trainer.progress=false", "hydra.run.dir=run")
    assert code == 0, err
    for args, expected in [
        (("export", "checkpoint=run", "output=null"), "output=null is a special file"),
        (("export", "checkpoint=run", "format=onnx", "output=run"), "output=run is a folder"),
        (("export", "checkpoint=run", "output=a_file/x.pt"), "the folder a_file is not a folder"),
        (("export", "checkpoint=run", "output=a_file/sub/x.pt"), "output=a_file/sub/x.pt: a_file is not a folder"),
        (("report", "run", "--out", "a_file"), "--out=a_file cannot be a folder: a_file is not a folder"),
        (("train", "hydra.run.dir=a_file/run"), "hydra.run.dir=a_file/run cannot be a folder"),
        (("train", "-m", "hydra.sweep.dir=null/sweep"), "hydra.sweep.dir=null/sweep cannot be a folder"),
    ]:
        code, _, err = qnnrun(*args)
        assert code == 1 and expected in err and len(err.strip().splitlines()) == 1, (args, err)
    assert (tmp_path / "null").is_symlink() and Path(os.devnull).is_char_device()
    assert (tmp_path / "a_file").read_text() == "mine"


def test_export_makes_the_output_folder_and_removes_it_when_the_export_fails(qnnrun, tmp_path: Path) -> None:
    code, _, err = qnnrun("train", "trainer.epochs=0", "hydra.run.dir=run")
    assert code == 0, err
    code, out, err = qnnrun("export", "checkpoint=run", "output=new/deeper/model.int.pt")
    assert code == 0 and "wrote new/deeper/model.int.pt" in out, err
    code, _, err = qnnrun("train", "method=fp", "trainer.epochs=0", "hydra.run.dir=float")
    assert code == 0, err
    code, _, err = qnnrun("export", "checkpoint=float", "format=onnx", "output=made/deeper/model.onnx")
    assert code == 1 and "has no quantized layer" in err, err  # refused while writing: the new folders go again
    assert not (tmp_path / "made").exists()


def test_each_command_has_its_own_help(qnnrun) -> None:
    code, out, _ = qnnrun("eval", "--help")
    assert code == 0 and out.startswith("qnnrun eval: evaluate a saved run")
    assert "checkpoint=PATH" in out and "backend=int" in out and "method:" not in out and "optim:" not in out
    # The example choice is one the command takes (it said model=resnet20 dataset=cifar10 on every command).
    assert "Choose one option per group, e.g. dataset=" in out and "model=" not in out
    code, out, _ = qnnrun("export", "--help")
    assert code == 0 and out.startswith("qnnrun export:") and "format=onnx" in out and "model:" not in out
    code, out, _ = qnnrun("bops", "--help")
    assert code == 0 and out.startswith("qnnrun bops:") and "\nbits: 1, 2, 3, 4, 5, 6, 7, 8, 32\n" in out
    code, out, _ = qnnrun("train", "--help")
    assert code == 0 and "experiment_method" not in out and "extend=true" in out


def test_redirected_log_has_one_line_per_epoch_and_sweep_jobs_say_their_number(tmp_path: Path) -> None:
    """No progress-bar frames when stderr is not a terminal (trainer.progress is true by default);
    a float run does not claim to be smaller than FP32; a sweep job's lines start with its number."""
    env = {**os.environ, "QNNRUN_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(["qnnrun", "train", "-m", "method=fp,ste", "trainer.epochs=2", "hydra.sweep.dir=sweep"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert "\r" not in log and "it/s" not in log
    lines = [line for line in log.splitlines() if "][qnnrun][" in line]
    assert lines and all(" - job 0: " in line or " - job 1: " in line for line in lines), lines
    assert sum("epoch 2/2" in line for line in lines) == 2
    assert any("MiB weights (float)" in line for line in lines) and "1.0x smaller" not in log
