"""``qnnrun <command> [overrides]``: one Hydra app per command (train, eval, bops, export, sensitivity).

Each command is an ordinary ``@hydra.main`` app with its own primary config in ``conf/``, so
every Hydra feature (overrides, ``-m`` sweeps, ``--cfg``, ``--help``, shell completion, launchers)
works per command. This module only picks the app from the first argument.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import BooleanNode, DictConfig, FloatNode, IntegerNode, ListConfig, OmegaConf, StringNode
from omegaconf.errors import ValidationError

import qnnrun
from qnnrun.checkpoint import check_output_folder, checkpoint_file
from qnnrun.errors import Interrupted, QnnrunError, plural

log = logging.getLogger("qnnrun")

USAGE = """usage: qnnrun <command> [overrides...]

commands:
  train   train one run, or a sweep with -m (qnnrun train --help lists groups and options)
  eval    evaluate a saved run: qnnrun eval checkpoint=PATH [dataset=...] [backend=fake|int]
  export  integer model or ONNX graph of a saved run: qnnrun export checkpoint=PATH format=int|onnx
  bops    per-layer BOPs / size table: qnnrun bops model=... bits=... [method=...]
  sensitivity  each layer of a saved run quantized alone: qnnrun sensitivity checkpoint=PATH bits=2 [budget_gbops=X]
  report  tables and plots across runs: qnnrun report PATH... (qnnrun report --help)
"""

# An absolute path makes Hydra read the folder from disk whether qnnrun runs from a checkout or
# an installed wheel (a module path would need conf/ to be a Python package).
CONFIG_DIR = str(qnnrun.CONFIG_DIR)

def _report(error: QnnrunError) -> None:
    """One line on stderr; in a sweep, the job's failure is noted and the sweep goes on (its
    :class:`qnnrun.sweep.SweepFailures` callback exits 1 at the end)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"qnnrun: error: {message}", file=sys.stderr, flush=True)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        from qnnrun.runs import note_failure

        log.error("job failed: %s", message)
        hydra_cfg = HydraConfig.get()
        note_failure(Path(hydra_cfg.sweep.dir), Path(hydra_cfg.runtime.output_dir), message)
        return
    sys.exit(1)


class OutputFolderCheck(Callback):
    """Registered in ``conf/train.yaml``: before Hydra creates the run (or sweep) folder, check that
    it can be created, so a bad ``hydra.run.dir`` is one line, not Hydra's traceback. The folder
    itself is left to Hydra (and the sweeper), after the later checks."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        _exit_on_error(lambda: check_output_folder(run_dir, "hydra.run.dir", keep=False))
        if config.get("resume") is False and config.hydra.job.name == "train":
            from qnnrun.runs import refuse_existing_run

            # Before Hydra writes its files there: the run's own .hydra/ stays as it is.
            _exit_on_error(lambda: refuse_existing_run(run_dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_error(lambda: check_output_folder(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir", keep=False))


def _exit_on_error(check: Callable[[], None]) -> None:
    """Run ``check``; its QnnrunError is one line on stderr and exit code 1 (Hydra's callbacks would
    print a traceback)."""
    try:
        check()
    except QnnrunError as error:
        print(f"qnnrun: error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)


def _guarded(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    @functools.wraps(task)
    def run(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Interrupted as error:  # stops a whole sweep too: the scheduler wants the node back
            print(f"qnnrun: {error}", file=sys.stderr, flush=True)
            if multiprocessing.parent_process() is not None:
                # A joblib (loky) worker survives SystemExit and would start the sweep's next queued
                # job, even with the command that launched it gone (a scheduler's SIGTERM reaches both).
                logging.shutdown()
                sys.stdout.flush()
                os._exit(128 + error.signum)
            sys.exit(128 + error.signum)
        except QnnrunError as error:
            _report(error)
        except Exception as error:  # a value no check anticipated: still one line, never a raw traceback
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            _report(QnnrunError(f"{type(error).__name__}: {detail} (set HYDRA_FULL_ERROR=1 for the traceback)"))

    return run


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@_guarded
def train_app(cfg: DictConfig) -> list[float] | None:
    """Train one run into Hydra's output folder; a resumed run that is finished is skipped untouched.

    A single run that fails before writing anything of its own leaves no folder; a sweep job leaves
    a failure record. A sweep job that would repeat an earlier job's run records a pointer to it.
    Returns the run's objectives for a search sweeper (:func:`qnnrun.runs.objectives`).
    """
    from qnnrun.config import validate_train
    from qnnrun.engine import train
    from qnnrun.runs import (check_finished_config, objectives, read_summary, remove_if_disposable,
                             resume_checkpoint, resumed_config)
    from qnnrun.sweep import (finished_summary, kept_duplicate, record_duplicate, record_failure,
                              restore_job_config, same_run_in_sweep)

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if sweep and cfg.resume is True:
        restore_job_config(run_dir)
    try:
        resumed = resume_checkpoint(cfg.resume)
        if resumed is not None:
            if sweep:
                raise QnnrunError(f"resume={cfg.resume} continues one run; a sweep continues with resume=true")
            cfg = resumed_config(cfg, overrides)
        target = resumed.parent if resumed is not None else run_dir
        finished = finished_summary(target, cfg.trainer.epochs) if cfg.resume is not False else None
        if finished is not None:
            check_finished_config(target, cfg)
            log.info("%s is finished (summary.json status done, %s): nothing to do", target,
                     plural(cfg.trainer.epochs, "epoch"))
            return objectives(finished)
        if sweep:
            validate_train(cfg)  # a job with a bad value fails as itself, not as another job's duplicate
            first = kept_duplicate(cfg, run_dir) or same_run_in_sweep(cfg, Path(hydra_cfg.sweep.dir), run_dir)
            if first is not None:
                record_duplicate(run_dir, cfg, first, overrides)
                log.info("the same run as %s (an earlier job of this sweep): not trained again", first)
                summary = read_summary(first)
                return objectives(summary) if summary is not None and summary.get("status") == "done" else None
        return objectives(train(cfg, run_dir, overrides))
    except Interrupted:  # not a failure: last.ckpt is there and resume=true continues the run
        raise
    except Exception as error:
        # A single run's error is on stderr; its folder is removed when the run wrote nothing there, and
        # a resumed run's folder keeps its resumable checkpoint with no failure record.
        if sweep or (not remove_if_disposable(run_dir, keep=Path.cwd()) and cfg.resume is False):
            record_failure(run_dir, cfg, error, overrides)
        raise


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@_guarded
def eval_app(cfg: DictConfig) -> None:
    """Evaluate a checkpoint and print its test metrics."""
    from qnnrun.config import check_choice, validate_dataset
    from qnnrun.evaluate import evaluate_checkpoint
    from qnnrun.export.run import BACKENDS, evaluate_integer

    if cfg.get("dataset") is not None:
        validate_dataset(cfg.dataset)
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise QnnrunError("qnnrun eval needs checkpoint=PATH (a .ckpt file or a run folder holding last.ckpt)")
    checkpoint_file(str(cfg.checkpoint), "checkpoint")
    if check_choice("backend", cfg.backend, BACKENDS) == "int":  # the integer model of format=int
        print(evaluate_integer(cfg.checkpoint, cfg.get("dataset"), cfg.paths, cfg.device))
        return
    result = evaluate_checkpoint(cfg.checkpoint, cfg.get("dataset"), cfg.paths, cfg.device)
    print(result)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@_guarded
def export_app(cfg: DictConfig) -> None:
    """Write the integer model (format=int) or an ONNX QDQ graph (format=onnx) of a checkpoint."""
    from qnnrun.export.run import export_checkpoint

    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise QnnrunError("qnnrun export needs checkpoint=PATH (a .ckpt file or a run folder holding last.ckpt)")
    checkpoint_file(str(cfg.checkpoint), "checkpoint")
    print(export_checkpoint(cfg.checkpoint, str(cfg.format), cfg.get("output"), cfg.device, cfg.check, cfg.paths))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="bops")
@_guarded
def bops_app(cfg: DictConfig) -> None:
    """Print the per-layer BOPs / size table of a model at the given bits."""
    from qnnrun.evaluate import bops_report

    print(bops_report(cfg))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sensitivity")
@_guarded
def sensitivity_app(cfg: DictConfig) -> None:
    """Print (and write as text, CSV and PNG) the accuracy drop of each layer of a checkpoint quantized
    alone, and with ``budget_gbops`` a ``quant.layer_bits`` proposal under that budget."""
    from qnnrun.runs import remove_if_disposable
    from qnnrun.sensitivity import sensitivity_report

    hydra_cfg = HydraConfig.get()
    try:
        print(sensitivity_report(cfg, list(hydra_cfg.overrides.task)))
    finally:  # a sweep job (-m) writes beside its checkpoint: the job folder Hydra made stays empty
        if hydra_cfg.mode == RunMode.MULTIRUN:
            remove_if_disposable(Path(hydra_cfg.runtime.output_dir), keep=Path.cwd())


def report_app() -> None:
    """Tables and plots across finished runs (argparse, not Hydra: it reads run folders, not a config)."""
    from qnnrun.report import main as report_main

    try:
        report_main(sys.argv[1:])
    except QnnrunError as error:
        print(f"qnnrun: error: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)


COMMANDS: dict[str, Callable[[], None]] = {"train": train_app, "eval": eval_app, "bops": bops_app,
                                           "export": export_app, "sensitivity": sensitivity_app,
                                           "report": report_app}


def _completion(argv: list[str]) -> None:
    """Route Hydra's shell-completion query (``qnnrun -sc query=bash``) to the typed command's app."""
    words = os.environ.get("COMP_LINE", "").split(" ")
    if len(words) > 2 and words[1] in COMMANDS and words[1] != "report":  # report takes paths: the shell's own
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
        os.environ["COMP_LINE"] = " ".join(quote_numeric_groups(os.environ["COMP_LINE"].split(" ")))
        sys.argv = [sys.argv[0], *argv]
        COMMANDS[words[1]]()
    else:
        typed = words[1] if len(words) > 1 else ""
        print(" ".join(f"{name} " for name in COMMANDS if name.startswith(typed)))


# `qnnrun <command> --help`: what each command does, its options, the groups it reads and an example
# choice of them (the config it takes follows). Rendered by the `qnnrun_help` resolver of
# conf/hydra/help/qnnrun.yaml.
COMMAND_HELP = {
    "train": ("train one run, or a sweep with -m", [
        "qnnrun train [group=option ...] [key=value ...]       one run",
        "qnnrun train -m method=ste,fp bits=2,4 seed=0,1       a sweep (one folder per job)",
        "qnnrun train -m ... resume=true                       re-run a sweep: finished runs skipped",
        "qnnrun train resume=RUN_FOLDER                        continue one run with its own config",
        "qnnrun train resume=RUN_FOLDER trainer.epochs=N extend=true   train a run longer (recorded)",
        "qnnrun train trainer.devices=N ...                    one run on N data-parallel processes",
    ], ("model", "dataset", "method", "bits", "optim", "sched", "trainer", "experiment", "hydra/launcher",
        "hydra/sweeper"), "model=resnet20 dataset=cifar10"),
    "eval": ("evaluate a saved run on its test set, or on another data set of the same shape", [
        "qnnrun eval checkpoint=PATH                 PATH: a .ckpt file or a run folder (its last.ckpt)",
        "qnnrun eval checkpoint=PATH dataset=NAME    another data set with the same image shape and classes",
        "qnnrun eval checkpoint=PATH backend=int     the integer model (as qnnrun export format=int builds it)",
        "options: device=auto|cpu|cuda, paths.data_dir=DIR (default: the run's own)",
    ], ("dataset",), "dataset=fashion_mnist (for an MNIST run)"),
    "export": ("write the integer model or an ONNX QDQ graph of a saved run", [
        "qnnrun export checkpoint=PATH format=int    packed integer codes: <checkpoint>.int.pt",
        "qnnrun export checkpoint=PATH format=onnx   QuantizeLinear/DequantizeLinear graph: <checkpoint>.onnx",
        "qnnrun export checkpoint=PATH format=onnx check=true   and count the test predictions onnxruntime changes",
        "options: output=FILE (default beside the checkpoint), device=cpu|cuda, check=false|true,",
        "  paths.data_dir=DIR (default: the run's own)",
    ], (), ""),
    "bops": ("print the per-layer BOPs / MACs / weight-memory table of a model, without training", [
        "qnnrun bops model=NAME dataset=NAME bits=B [method=NAME] [quant.first_layer=fp|8|same ...]",
        "the data set only gives the input shape and class count: no data is read",
    ], ("model", "dataset", "method", "bits"), "model=resnet20 dataset=cifar10"),
    "sensitivity": ("test accuracy lost when each conv/linear layer of a saved run alone is quantized, without "
                    "training", [
        "qnnrun sensitivity checkpoint=PATH bits=B [method=ste]     each layer alone at B (1-8) bits: weights,",
        "    inputs, both; a table on stdout, sensitivity.txt, .csv and .png in the output folder",
        "qnnrun sensitivity checkpoint=PATH bits=B budget_gbops=X   and a quant.layer_bits (8 or B bits per layer)",
        "    under X GBOPs per image: greedy, least accuracy drop per GBOP saved first",
        "qnnrun sensitivity -m checkpoint=PATH bits=2,4             each width in turn, each into its own folder",
        "PATH: a .ckpt file or a run folder (its last.ckpt), usually a float run; the model and data set are its own",
        "options: batches=N (the first N test batches; null: all), output=DIR (default <run folder>/sensitivity_w<B>,",
        "  sensitivity_<method>_w<B> for another method), device=auto|cpu|cuda, paths.data_dir=DIR (default: the",
        "  run's own), quant.*, method.*",
        "nothing is trained: each quantized layer gets what the method's calibration (quant.calib_batches training",
        "  batches) gives it; learned steps and clip levels (lsq, pact) and schedules (nbn, fbf, lbl, sq, uniq, aqe)",
        "  start as calibrated, every channel quantized. Not method=bnn (every layer binary) or fp.",
    ], ("method", "bits"), "method=lsq bits=4"),
}


def group_options(group: str) -> list[str]:
    """The options of config group ``group`` in conf/, numbers in numeric order (``bits``: 1, 2, ..., 8, 32);
    of ``hydra/...`` groups (launchers, sweepers) Hydra's, its installed plugins' included."""
    if group.startswith("hydra/"):
        from contextlib import nullcontext

        from hydra import initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        started = GlobalHydra.instance().is_initialized()  # inside Hydra's --help; else a compose of our own
        with nullcontext() if started else initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return GlobalHydra.instance().config_loader().get_group_options(group)
    names = [p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")]
    return sorted(names, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))


def command_help(command: str, _root_: DictConfig) -> str:
    """The body of ``qnnrun <command> --help``: what it does, usage lines, the groups it reads with the
    options it takes, and the config it takes: Hydra's ``$CONFIG`` (the composed config), or for a
    command that composes more than it takes (sensitivity: train's config) its own keys of it."""
    summary, usage, groups, example = COMMAND_HELP[command]
    keys, refused = _taken(command)
    lines = [f"qnnrun {command}: {summary}.", "", "Usage:", *(f"  {line}" for line in usage)]
    if groups:
        lines += ["", "== Configuration groups ==", f"Choose one option per group, e.g. {example}.", "",
                  *(f"{group}: {', '.join(o for o in group_options(group) if o not in refused.get(group, ()))}"
                    for group in groups)]
    # Hydra puts its composed config for $CONFIG into the template this text is resolved into.
    config = "$CONFIG" if keys is None else OmegaConf.to_yaml(OmegaConf.masked_copy(_root_, keys)).replace("$", "$$")
    lines += ["", "== Config ==", "Override anything in the config (foo.bar=value).", "", config]
    return "\n".join(lines)


def _taken(command: str) -> tuple[list[str] | None, dict[str, tuple[str, ...]]]:
    """The top-level config keys ``command`` takes (``None``: all it composes) and the options of its
    groups that it refuses: qnnrun sensitivity's (:mod:`qnnrun.sensitivity`), for its help."""
    if command != "sensitivity":
        return None, {}
    from qnnrun.sensitivity import CONFIG_KEYS, REFUSED_CHOICES

    return list(CONFIG_KEYS), REFUSED_CHOICES


OmegaConf.register_new_resolver("qnnrun_help", command_help, replace=True)
# conf/train.yaml's log format: "job 3: " before each line of sweep job 3, nothing in a single run.
OmegaConf.register_new_resolver("qnnrun_job_prefix",
                                lambda mode, num: f"job {num}: " if str(mode).endswith("MULTIRUN") else "",
                                replace=True)


def _job_folder(num: Any, overrides: Any, sweep_dir: Any) -> str:
    from qnnrun.sweep import job_folder_name

    return job_folder_name(int(num), [str(o) for o in overrides], Path(str(sweep_dir)))


def _run_folder(prefix: Any, method: Any, weight_bits: Any, act_bits: Any, overrides: Any) -> str:
    from qnnrun.runs import run_folder_name

    return run_folder_name(str(prefix), None if method is None else str(method), weight_bits, act_bits,
                           [str(o) for o in overrides])


# conf/train.yaml's folder names, from the settings that tell a run apart: a sweep job's
# (hydra.sweep.subdir: 3_ste_w2a2_seed1) and a single run's (hydra.run.dir: <date>/12-00-00_ste_w4a4).
OmegaConf.register_new_resolver("qnnrun_job_folder", _job_folder, replace=True)
OmegaConf.register_new_resolver("qnnrun_run_folder", _run_folder, replace=True)


_OVERRIDE = re.compile(r"^(?P<key>[\w/]+)=(?P<value>[^'\"()\[\]{}$]+)$")
_NON_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|true|false|True|False|inf|nan")
_CHOICE = re.compile(r"^(?P<key>[\w/]+)=choice\((?P<value>[^'\"()\[\]{}$]+)\)$")  # an Optuna sweeper's dimension


def quote_numeric_groups(args: list[str]) -> list[str]:
    """Quote number-like choices of config groups: ``bits=2`` -> ``bits='2'``, ``bits=2,3`` ->
    ``bits='2','3'``, ``bits=choice(2, 4)`` -> ``bits=choice('2','4')``. Hydra parses a bare number (or
    true/false) as such, and a config-group choice must be a string."""
    groups = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key in groups and value[:1] in ("[", "{"):  # Hydra fails on these with a traceback
            options = sorted(p.stem for p in (Path(CONFIG_DIR) / key).glob("*.yaml"))
            raise QnnrunError(f"{arg} is not valid: choose one of {', '.join(options)} "
                              f"(several, comma-separated, with -m)")
        match = _OVERRIDE.match(arg) or _CHOICE.match(arg)
        if match and (match["key"] in groups or match["key"].startswith("hydra/")):
            values = [f"'{v.strip()}'" if _NON_STRING.fullmatch(v.strip()) else v for v in match["value"].split(",")]
            arg = f"{match['key']}=" + ("choice({})" if match.re is _CHOICE else "{}").format(",".join(values))
        out.append(arg)
    return out


def quote_paths(args: list[str]) -> list[str]:
    """Quote an override's value that names an existing file or folder but does not read as that
    one plain string in Hydra's grammar. The job folder of a sweep made before the readable names
    (``init_from=outputs/multirun/<date>/<time>/0_bits='2',method=fp``) holds ``=``, ``,`` and quotes:
    Hydra would fail on it with a syntax error or read a sweep list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and value and not key.startswith("-") and Path(value).exists():
            try:
                plain = parser.parse_overrides([arg])[0].value() == value
            except Exception:  # Hydra's grammar errors have no common base class
                plain = False
            quote = next((q for q in ("'", '"') if q not in value), None)
            if not plain and quote:  # a path holding both quotes stays as given
                arg = f"{key}={quote}{value}{quote}"
        out.append(arg)
    return out


# Flags that print and exit (help, version, completion): the command line is Hydra's to read as is.
_PRINTING_FLAGS = ("--help", "-h", "--hydra-help", "--version", "-sc", "--shell-completion")
# Subcommands a sweep (-m) makes no sense for: each reads or writes one checkpoint or prints one table
# (sensitivity's jobs each write their own folder beside the checkpoint: it takes -m).
_SINGLE_COMMANDS = ("eval", "export", "bops")


def prints_and_exits(args: list[str]) -> bool:
    """Whether the arguments hold a flag with which Hydra prints (help, version, completion) and exits."""
    return any(arg in _PRINTING_FLAGS for arg in args)


def check_command_line(command: str, args: list[str]) -> None:
    """One :class:`QnnrunError` for what Hydra's command line parser would report in several lines
    (its usage text, or its override grammar's advice) or take silently: a flag it does not have, a
    flag's value it does not take, a word that is no ``KEY=VALUE`` override, ``-m`` on a command that
    runs no sweep (it made a sweep folder), and a sweep value (``bits=2,3``) without ``-m``."""
    import argparse

    from hydra._internal.utils import get_args_parser

    if prints_and_exits(args):
        return
    parser = get_args_parser()
    parser.exit_on_error = False
    flags = sorted({flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")})
    try:
        known, unknown = parser.parse_known_args(args)
    except argparse.ArgumentError as error:
        raise QnnrunError(f"{error}") from None
    if unknown:
        raise QnnrunError(f"{unknown[0]} is not an option of qnnrun {command}: options are KEY=VALUE overrides and "
                          f"Hydra's flags, {', '.join(flags)}")
    word = next((o for o in known.overrides if "=" not in o), None)
    if word is not None:
        raise QnnrunError(f"{word!r} is not an override: give KEY=VALUE (qnnrun {command} --help lists the options)")
    if known.multirun and command in _SINGLE_COMMANDS:
        raise QnnrunError(f"-m (a sweep) is for qnnrun train: qnnrun {command} takes one value per option")
    modes = [flag for flag, given in (("-m", known.multirun), ("--run", known.run), ("--cfg", known.cfg),
                                      ("--info", known.info is not None)) if given]
    if len(modes) > 1:  # Hydra's traceback: "Only one of --run, --multirun, --cfg, --info ... can be specified"
        raise QnnrunError(f"{' and '.join(modes)} cannot be given together: Hydra does one of -m, --run, --cfg "
                          f"and --info" + (" (to see a job's config: --cfg job without -m, one value per option)"
                                           if known.multirun and known.cfg else ""))


def check_group_choices(args: list[str]) -> None:
    """Raise a one-line :class:`QnnrunError` for a config-group choice that ``conf/`` does not have
    (``method=magic``; each value of a sweep list ``method=ste,magic``), naming the valid ones:
    Hydra's own message spans many lines. Skipped when ``hydra.searchpath`` may add options.
    ``hydra/sweeper=optuna`` is refused for ``search``, which extends it."""
    if "hydra/sweeper=optuna" in args:
        raise QnnrunError("hydra/sweeper=optuna is Hydra's Optuna sweeper as it comes: it draws a config group's "
                          "option as a number (bits=choice(2, 4) gives bits=2, which Hydra refuses) and its study "
                          "ends with the command; use hydra/sweeper=search, the same sweeper with the study in the "
                          "sweep folder (resume=true continues it)")
    if any(_is_searchpath(arg) for arg in args):
        return
    for arg in args:
        match = _OVERRIDE.match(arg)
        # hydra/...: Hydra's plugins bring options of their own (hydra/launcher=submitit_local).
        if not match or match["key"].startswith("hydra") or not (Path(CONFIG_DIR) / match["key"]).is_dir():
            continue
        options = group_options(match["key"])
        for value in match["value"].split(","):
            if value.strip("'") not in (*options, "null"):
                raise QnnrunError(f"{match['key']}={value} is not valid: choose one of {', '.join(options)}")


def _first_job(overrides: list[Any]) -> list[str]:
    """Hydra's parsed ``overrides`` as one job's overrides: a sweep's first value (a range or an
    interval, which only a sweeper plugin expands, is left out)."""
    job = []
    for override in overrides:
        if not override.is_sweep_override():
            job.append(override.input_line)
            continue
        try:
            first = next(iter(override.sweep_string_iterator()))
        except Exception:  # an interval (optuna): no single value to try
            continue
        job.extend(quote_numeric_groups([f"{override.get_key_element()}={first}"]))  # choice('2') yields 2
    return job


def _keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config (the values of list-valued keys not descended into)."""
    keys = []
    for key in cfg:
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        value = cfg._get_node(key)
        if isinstance(value, DictConfig):
            keys += _keys(value, dotted + ".")
    return keys


def _did_you_mean(key: str, cfg: DictConfig, groups: list[str], value: str = "VALUE") -> str:
    """``"; did you mean trainer.epochs?"``: the key of the config (or group name) closest to ``key``,
    among keys as deep as ``key`` (so ``optim.lrr`` is matched against ``optim.lr``, not ``optim``).
    A key with dots inside a mapping (``quant.layer_bits``' ``features.1``, the search space's
    ``search.features_4``), which a dotted path cannot reach, gets the mapping syntax instead."""
    import difflib

    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        parent, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
        mapping = OmegaConf.select(cfg, parent, default=None)
        if "." in rest and isinstance(mapping, DictConfig) and rest in mapping:
            quote = '"' if "'" in value else "'"
            inner = "'" if quote == '"' else '"'
            if any(c in value for c in "(),[]{} ") and not value.startswith(("'", '"')) and inner not in value:
                value = f"{inner}{value}{inner}"  # unquoted, Hydra reads choice(2,4) in a mapping as a sweep
            return (f"; '{rest}' is one key of {parent}, which a dotted path cannot reach: give "
                    f"{quote}{parent}={{{rest}: {value}}}{quote}")
    keys = {k for k in _keys(cfg) if not k.startswith("hydra.") or key.startswith("hydra.")}
    keys |= set(_own_groups(cfg, groups))  # never a group of another command: eval's bits=2 named bits
    same_depth = sorted(k for k in keys if k.count(".") == key.count(".") and k != key)
    close = difflib.get_close_matches(key, same_depth, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _own_groups(cfg: DictConfig, groups: list[str]) -> list[str]:
    """The config groups of ``groups`` that the command composed as ``cfg`` (with its ``hydra`` node)
    reads: those in its defaults list, set to null or not (eval's ``dataset``)."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {}
    return [group for group in groups if group in choices]


def _options_text(cfg: DictConfig, groups: list[str]) -> str:
    """What a command composed as ``cfg`` takes, for an error line: its keys (``paths.data_dir``),
    then its groups (``and the group dataset``)."""
    keys = [k for k in _keys(cfg) if k != "hydra" and not k.startswith("hydra.")]
    leaves = [k for k in keys if not any(other.startswith(f"{k}.") for other in keys)]
    own = _own_groups(cfg, groups)
    return ", ".join(leaves) + (f" and the group{'s' * (len(own) > 1)} {', '.join(own)}" if own else "")


# Where a sweeper's dimensions live (Hydra's basic sweeper and the search alike): params.<run option>.
SWEEP_PARAMS = "hydra.sweeper.params."


def _searchpath_groups(searchpath: list[str]) -> list[str]:
    """The config groups (folders, ``a/b`` for nested ones) of the ``file://`` folders that
    ``hydra.searchpath`` overrides name (``pkg://`` ones are not looked into)."""
    groups = []
    for override in searchpath:
        for entry in override.partition("=")[2].strip("[]").split(","):
            entry = entry.strip().strip("'\"")
            if entry.startswith("file://"):
                root = Path(entry[len("file://"):])
                groups += [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_dir()]
    return groups


def _is_searchpath(arg: str) -> bool:
    """Whether a command-line argument sets ``hydra.searchpath`` (a config folder of the user's own)."""
    return arg.lstrip("+~").partition("=")[0] == "hydra.searchpath"


def check_overrides(config_name: str, args: list[str]) -> None:
    """Compose ``config_name`` with ``args``' overrides (a sweep's first job; ``args`` as the user typed
    them, quoted here as Hydra will read them) as Hydra will, and turn what Hydra would report in several
    lines into one :class:`QnnrunError` naming the override as typed: a key the config does not have
    (with the closest keys; a group of another command, with this command's options), an option no
    group has (``hydra/launcher=foo`` too), and a ``+key`` that adds a key no code reads (Hydra's own
    advice for a typo, which would train silently with the default)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException

    from qnnrun.runs import asks_for_sweep

    typed = {o: a for o, a in zip(quote_paths(quote_numeric_groups(args)), args, strict=True)
             if "=" in a and not a.startswith("-")}  # bits='2' (as Hydra reads it) -> bits=2
    overrides = list(typed)
    parser, parsed = OverridesParser.create(), []
    for override in overrides:  # one at a time, so that the message names the one Hydra cannot read
        try:
            parsed += parser.parse_overrides([override])
        except HydraException as error:
            key, _, value = override.partition("=")
            quote = "'" if "'" not in value else '"'
            how = (f"a value that holds =, spaces, commas or brackets as text needs quotes, e.g. "
                   f"{key}={quote}{value}{quote}")
            if value.lstrip().startswith("{"):  # quoting it makes a string, not the mapping it meant
                how = "a mapping's keys are written without quotes, a glob's brackets escaped with \\, e.g. " + (
                    f"{key}={{features.1: 8, features.\\[45\\]: 4, classifier: {{w: 4, a: 8}}}}"
                    if key.lstrip("+~") == "quant.layer_bits" else f"{key}={{name: 1, other: {{a: 2}}}}")
            raise QnnrunError(f"{override} is not an override Hydra can read ({str(error).strip().splitlines()[0]});"
                              f" {how}") from None
    job = _first_job(parsed)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            # A config folder of the user's own (hydra.searchpath) adds groups and presets; the compose
            # reads it from the override, first of all (a prefix of the command is composed below).
            searchpath = [o for o in job if _is_searchpath(o)]
            job = searchpath + [o for o in job if o not in searchpath]
            groups = [g for g in GlobalHydra.instance().config_loader().list_groups("") if g != "hydra"]
            groups += _searchpath_groups(searchpath)
            # The groups chosen, without the keys set: what the keys are checked against.
            chosen = [o for o, p in zip(job, _first_job_parsed(job), strict=True)
                      if p.key_or_group in groups or "/" in p.key_or_group or _is_searchpath(o)]
            try:
                base = compose(config_name, overrides=searchpath, return_hydra_config=True)
            except Exception as error:
                raise QnnrunError(f"{searchpath[0]} is not valid: expected a list of config folders, e.g. "
                                  f"hydra.searchpath=[file:///path/to/conf] ({str(error).strip().splitlines()[0]})"
                                  ) from None
            try:
                base = compose(config_name, overrides=chosen, return_hydra_config=True)
                for override in parsed:
                    if override.key_or_group.startswith(SWEEP_PARAMS):
                        _check_sweep_dimension(override, base, groups, config_name)
                _check_typed_values(parsed, base)
                composed = compose(config_name, overrides=job, return_hydra_config=True)
            except MissingConfigException as error:
                missing = str(error.missing_cfg_file or "")
                raise QnnrunError(f"{missing.rpartition('/')[0]}={missing.rpartition('/')[2]} is not valid: choose "
                                  f"one of {', '.join(error.options or []) or 'none'}") from None
            except HydraException as error:  # a key, or a group this command does not read
                if isinstance(error.__cause__, ValidationError):  # a value the schema's type cannot hold
                    cause = error.__cause__
                    raise QnnrunError(f"{cause.full_key}={_shown(cause.value)} is not valid: "
                                      f"{str(cause.msg).splitlines()[0]}") from None
                key = str(error).partition("Could not override '")[2].partition("'")[0]
                if not key:
                    raise QnnrunError(_composition_error_line(error)) from None
                value = next((t.partition("=")[2] for o, t in typed.items()
                              if o.partition("=")[0].lstrip("+~") == key), "")
                group = key.partition(".")[0]
                if group in groups and group not in _own_groups(base, groups) and group not in base:
                    raise QnnrunError(f"{key}={value}: qnnrun {config_name} has no option {group}"
                                      + (" (it runs the checkpoint's own model, method and bits)"
                                         if "checkpoint" in base.keys() else "")
                                      + f"; its options are {_options_text(base, groups)}") from None
                raise QnnrunError(f"{key}={value}: no such option{_did_you_mean(key, base, groups, value)} (qnnrun "
                                  f"{config_name} --cfg job lists the options)") from None
            except QnnrunError:
                raise
            except Exception as error:  # e.g. a group set to null where it is not optional
                culprit = next(o for i, o in enumerate(job) if not _composes(config_name, job[:i + 1]))
                key = culprit.partition("=")[0].lstrip("+~")
                options = f": choose one of {', '.join(group_options(key))}" if key in groups else ""
                raise QnnrunError(f"{culprit} is not valid{options} ({str(error).strip().splitlines()[0]})") from None
            _check_sampler(composed)
            hydra_sweep = next((o for o in parsed if o.is_sweep_override()
                                and o.key_or_group.startswith(("hydra.", "hydra/"))  # a setting or a group
                                and not o.key_or_group.startswith(SWEEP_PARAMS)), None)
            if hydra_sweep is not None:  # Hydra's "Sweeping over Hydra's configuration is not supported" and more
                raise QnnrunError(f"{hydra_sweep.input_line}: Hydra's own settings take one value (a sweep cannot "
                                  f"vary them)")
            shows_config = any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in args)
            if shows_config or not (asks_for_sweep(args)
                                    or "MULTIRUN" in str(OmegaConf.select(composed, "hydra.mode"))):
                sweep = next((o for o in parsed if o.is_sweep_override() and not o.key_or_group.startswith("hydra.")),
                             None)
                if sweep is not None and shows_config:  # Hydra's several lines: "Ambiguous value ..."
                    raise QnnrunError(f"{sweep.input_line}: several values with --cfg, which prints one job's "
                                      f"config: give one value")
                if sweep is not None:
                    how = (f"qnnrun {config_name} takes one value" if config_name in _SINGLE_COMMANDS else
                           f"run each value with qnnrun {config_name} -m")
                    if isinstance(OmegaConf.select(base, sweep.key_or_group, default=None), ListConfig):
                        how += f", or write the list as {sweep.key_or_group}=[a,b]"
                    raise QnnrunError(f"{typed.get(sweep.input_line, sweep.input_line)}: several values without "
                                      f"-m: {how}")
            missing = _missing_keys(composed)
            if missing and config_name == "train":  # eval and export name their own (checkpoint=PATH)
                raise QnnrunError(f"{missing[0]} has no value and this run needs one: give {missing[0]}=VALUE"
                                  + (" (the checkpoint to start from: a .ckpt file or a run folder)"
                                     if missing[0] == "init_from" else ""))
            for override in (o for o in parsed if o.is_add() or o.is_force_add()):
                key = override.key_or_group
                if key in groups or "/" in key or OmegaConf.select(base, key, default=None) is not None:
                    continue
                raise QnnrunError(f"{override.input_line}: {key} is not an option of qnnrun {config_name}, no code "
                                  f"would read it{_did_you_mean(key, base, groups)}")
    finally:
        GlobalHydra.instance().clear()


def _check_sampler(cfg: DictConfig) -> None:
    """One error line for a search's sampler (``hydra.sweeper.sampler``) that cannot be built: a
    ``_target_`` that does not load, or options the sampler refuses (NSGA-II with
    ``population_size=1``). Hydra builds it before any sweeper code runs and prints several lines.
    Called inside an initialized Hydra (its plugins' config groups list the samplers)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    sampler = OmegaConf.select(cfg, "hydra.sweeper.sampler", default=None)
    if not isinstance(sampler, DictConfig) or "_target_" not in sampler:
        return
    target = str(sampler._target_)
    try:
        get_class(target)
    except Exception:
        options = GlobalHydra.instance().config_loader().get_group_options("hydra/sweeper/sampler")
        raise QnnrunError(f"hydra.sweeper.sampler._target_={target} cannot be loaded: choose a sampler with "
                          f"hydra/sweeper/sampler=, one of {', '.join(options)}") from None
    try:
        instantiate(sampler)
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise QnnrunError(f"hydra.sweeper.sampler is not valid: {target.rpartition('.')[2]} refuses its options: "
                          f"{str(cause).strip().splitlines()[0]}") from None


def _check_sweep_dimension(override: Any, cfg: DictConfig, groups: list[str], config_name: str) -> None:
    """One error line for ``hydra.sweeper.params.<option>=VALUE`` (a parsed override) other than a
    quoted value for a dimension the sweep has: an option with dots (a key of the mapping, which a
    dotted path cannot reach), a new dimension or a sweep value (Hydra refuses ``choice()`` and
    ``a,b`` under ``hydra.``, with or without ``+``; ``<option>=choice(...)`` on its own is the way,
    and it replaces the preset's dimension), or no run option at all."""
    key, value = override.key_or_group, override.input_line.partition("=")[2]
    option = key[len(SWEEP_PARAMS):]
    params = OmegaConf.select(cfg, SWEEP_PARAMS.rstrip("."), default=None)
    known = isinstance(params, DictConfig) and option in params
    if known and "." in option:
        raise QnnrunError(f"{override.input_line}: no such option{_did_you_mean(key, cfg, groups, value)}")
    if not known and option not in groups and (option.startswith("hydra.") or option not in _keys(cfg)):
        close = "" if option.startswith("hydra.") else _did_you_mean(option, cfg, groups, value)
        raise QnnrunError(f"{override.input_line}: {option} is not an option of qnnrun {config_name}, so no run "
                          f"would read it{close}")
    if known and not override.is_sweep_override():
        return
    missing = "" if known else f"the sweep has no dimension {option}; "
    raise QnnrunError(f"{override.input_line}: {missing}give {option}={value} on its own, which the sweeper reads as "
                      f"a dimension (Hydra sweeps none of its own settings)")


def _composition_error_line(error: Exception) -> str:
    """Hydra's several-line composition error as one line that keeps the key it is about: ``In
    'experiment/mp_search': Key 'n_trials' not in 'BasicSweeperConf' (hydra.sweeper.n_trials)``."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    head = lines[0].replace(" ConfigKeyError raised while composing config:", "").rstrip(":")
    detail = next((line for line in lines[1:] if not line.startswith(("full_key:", "object_type="))), "")
    full_key = next((line.partition(":")[2].strip() for line in lines[1:] if line.startswith("full_key:")), "")
    return head + (f": {detail}" if detail else "") + (f" ({full_key})" if full_key else "")


# A schema-typed option's values (qnnrun/schema.py): what each type takes, and the line that says so.
# Stricter than OmegaConf's conversions, which read trainer.compile=2 as true.
_TYPED: tuple[tuple[type, Callable[[Any], bool], str], ...] = (
    (BooleanNode, lambda v: isinstance(v, bool), "valid are true, false"),
    (IntegerNode, lambda v: isinstance(v, int) and not isinstance(v, bool), "expected an integer"),
    (FloatNode, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "expected a number"),
    (StringNode, lambda v: not isinstance(v, (list, dict)), "expected text"),
    (ListConfig, lambda v: isinstance(v, list), "expected a list in brackets, [a, b, ...]"),
)


def _shown(value: Any) -> str:
    """A value as the command line writes it: null, true, false, 'text', 3."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def _check_typed_values(parsed: list[Any], cfg: DictConfig) -> None:
    """A value given for a typed option that its type does not take (every value of a sweep list
    ``trainer.epochs=5,abc``; null where the option needs a value): one QnnrunError naming the key,
    the value and what is valid. Values from YAML files and interpolations get OmegaConf's own
    conversions (``"5"`` for an integer is 5)."""
    for override in parsed:
        node: Any = cfg
        for part in override.key_or_group.split("."):
            node = node._get_node(part) if isinstance(node, DictConfig) and part in node else None
        kind = next((k for k in _TYPED if isinstance(node, k[0])), None)
        if kind is None or override.is_delete() or (override.is_sweep_override() and not override.is_choice_sweep()):
            continue
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if value is None and node._is_optional() or value is not None and kind[1](value) or "${" in str(value):
                continue
            raise QnnrunError(f"{override.key_or_group}={_shown(value)} is not valid: {kind[2]}")


def _missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys of ``cfg`` (``hydra`` aside) set to ``???``, without resolving any interpolation."""
    missing = []
    for key in cfg.keys():
        if not prefix and key == "hydra":
            continue
        if OmegaConf.is_missing(cfg, key):
            missing.append(f"{prefix}{key}")
        elif OmegaConf.is_dict(cfg._get_node(key)):
            missing += _missing_keys(cfg._get_node(key), f"{prefix}{key}.")
    return sorted(missing)


def _composes(config_name: str, overrides: list[str]) -> bool:
    """Whether Hydra composes ``config_name`` with ``overrides`` (inside an initialized Hydra)."""
    from hydra import compose

    try:
        compose(config_name, overrides=overrides, return_hydra_config=True)
    except Exception:
        return False
    return True


def _first_job_parsed(job: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(job)


def main() -> None:
    """Console entry point ``qnnrun``."""
    if hasattr(signal, "SIGPIPE"):  # `qnnrun ... | head` ends quietly, as other command-line tools do
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = sys.argv[1:]
    if argv and argv[0] in ("-sc", "--shell-completion") and "query=" in " ".join(argv):
        _completion(argv)
        return
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    command = argv[0]
    if command not in COMMANDS:
        print(f"qnnrun: error: unknown command '{command}': valid commands are {', '.join(COMMANDS)}",
              file=sys.stderr)
        sys.exit(1)
    if command == "report":  # argparse, not Hydra: its arguments are paths and options, never overrides
        sys.argv = [sys.argv[0], *argv[1:]]
        report_app()
        return
    try:
        if command == "sensitivity":  # its bits are 1-8: one line saying so before the bits group's own check
            from qnnrun.sensitivity import check_width_overrides

            check_width_overrides(argv[1:])
        check_command_line(command, argv[1:])
        check_group_choices(argv[1:])
        sys.argv = [sys.argv[0], *quote_paths(quote_numeric_groups(argv[1:]))]
        # With hydra.searchpath a config folder of the user's own adds groups and presets: the compose
        # sees them through the override (check_group_choices, reading qnnrun's conf/ only, skips).
        if not prints_and_exits(argv[1:]):
            check_overrides(command, argv[1:])
    except QnnrunError as error:
        print(f"qnnrun: error: {error}", file=sys.stderr)
        sys.exit(1)
    if command == "train":
        from qnnrun.runs import resume_single_run_args
        from qnnrun.sweep import resume_sweep_args

        # A joblib worker stopped by a signal leaves its semaphores to loky's resource tracker (a process
        # started later, reading this variable), which unlinks them and warns about each: noise after
        # the jobs' own "stopped by" lines.
        quiet, given = "ignore:resource_tracker", os.environ.get("PYTHONWARNINGS", "")
        if quiet not in given.split(","):
            os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [given, quiet]))

        sys.argv = [sys.argv[0], *resume_single_run_args(resume_sweep_args(sys.argv[1:]))]
    COMMANDS[command]()


if __name__ == "__main__":
    main()
