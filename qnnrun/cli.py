"""``qnnrun <command> [overrides]``: one Hydra app per command (train, eval, bops, export).

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
from omegaconf import DictConfig, OmegaConf

import qnnrun
from qnnrun.errors import Interrupted, QnnrunError

log = logging.getLogger("qnnrun")

USAGE = """usage: qnnrun <command> [overrides...]

commands:
  train   train one run, or a sweep with -m (qnnrun train --help lists groups and options)
  eval    evaluate a saved run: qnnrun eval checkpoint=PATH [dataset=...] [backend=fake|int]
  export  integer model or ONNX graph of a saved run: qnnrun export checkpoint=PATH format=int|onnx
  bops    per-layer BOPs / size table: qnnrun bops model=... bits=... [method=...]
  report  tables and plots across runs: qnnrun report PATH... (qnnrun report --help)
"""

# An absolute path makes Hydra read the folder from disk whether qnnrun runs from a checkout or
# an installed wheel (a module path would need conf/ to be a Python package).
CONFIG_DIR = str(qnnrun.CONFIG_DIR)

_failures: list[str] = []


def _report(error: QnnrunError) -> None:
    """One line on stderr; in a sweep, the job is recorded as failed and the sweep goes on."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"qnnrun: error: {message}", file=sys.stderr, flush=True)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        log.error("job failed: %s", message)
        # The job's folder: SweepFailures adds the jobs that failed in other processes, once each.
        _failures.append(str(Path(HydraConfig.get().runtime.output_dir).resolve()))
        return
    sys.exit(1)


class OutputFolderCheck(Callback):
    """Registered in ``conf/train.yaml``: before Hydra creates the run (or sweep) folder, check that
    it can be created, so a bad ``hydra.run.dir`` is one line, not Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_creatable(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_creatable(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")


def _check_creatable(folder: Path, key: str) -> None:
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "not a folder" if not existing.is_dir() else "not writable"
        print(f"qnnrun: error: output folder {folder} cannot be created: {existing} is {what}; "
              f"choose another with {key}=DIR", file=sys.stderr, flush=True)
        sys.exit(1)


def _guarded(task: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    @functools.wraps(task)
    def run(cfg: DictConfig) -> None:
        try:
            task(cfg)
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
def train_app(cfg: DictConfig) -> None:
    """Train one run into Hydra's output folder; with resume=true a finished run is skipped untouched."""
    from qnnrun.engine import train
    from qnnrun.sweep import finished_summary, record_failure

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if cfg.resume is True and finished_summary(run_dir, cfg.trainer.epochs) is not None:
        log.info("resume=true: %s is finished (summary.json status done), skipped", run_dir)
        return
    try:
        train(cfg, run_dir)
    except Interrupted:  # not a failure: last.ckpt is there and resume=true continues the run
        raise
    except Exception as error:
        record_failure(run_dir, cfg, error, list(hydra_cfg.overrides.task))
        raise


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@_guarded
def eval_app(cfg: DictConfig) -> None:
    """Evaluate a checkpoint and print its test metrics."""
    from qnnrun.engine import evaluate_checkpoint

    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise QnnrunError("qnnrun eval needs checkpoint=PATH (a .ckpt file or a run folder holding last.ckpt)")
    backend = str(cfg.get("backend", "fake"))
    if backend == "int":
        from qnnrun.export.run import evaluate_integer

        print(evaluate_integer(cfg.checkpoint, cfg.get("dataset"), cfg.paths, cfg.device))
        return
    if backend != "fake":
        raise QnnrunError(f"backend '{backend}' is not valid: valid are fake (the fake-quant model), int (the "
                          f"integer model)")
    result = evaluate_checkpoint(cfg.checkpoint, cfg.get("dataset"), cfg.paths, cfg.device)
    print(result)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@_guarded
def export_app(cfg: DictConfig) -> None:
    """Write the integer model (format=int) or an ONNX QDQ graph (format=onnx) of a checkpoint."""
    from qnnrun.export.run import export_checkpoint

    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise QnnrunError("qnnrun export needs checkpoint=PATH (a .ckpt file or a run folder holding last.ckpt)")
    print(export_checkpoint(cfg.checkpoint, str(cfg.format), cfg.get("output"), cfg.device))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="bops")
@_guarded
def bops_app(cfg: DictConfig) -> None:
    """Print the per-layer BOPs / size table of a model at the given bits."""
    from qnnrun.engine import bops_report

    print(bops_report(cfg))


def report_app() -> None:
    """Tables and plots across finished runs (argparse, not Hydra: it reads run folders, not a config)."""
    from qnnrun.report import main as report_main

    try:
        report_main(sys.argv[1:])
    except QnnrunError as error:
        print(f"qnnrun: error: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)


COMMANDS: dict[str, Callable[[], None]] = {"train": train_app, "eval": eval_app, "bops": bops_app,
                                           "export": export_app, "report": report_app}


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


_OVERRIDE = re.compile(r"^(?P<key>[\w/]+)=(?P<value>[^'\"()\[\]{}$]+)$")
_NON_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|true|false|True|False|inf|nan")


def quote_numeric_groups(args: list[str]) -> list[str]:
    """Quote number-like choices of config groups: ``bits=2`` -> ``bits='2'``, ``bits=2,3`` ->
    ``bits='2','3'``. Hydra parses a bare number (or true/false) as such, and a config-group
    choice must be a string."""
    groups = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key in groups and value[:1] in ("[", "{"):  # Hydra fails on these with a traceback
            options = sorted(p.stem for p in (Path(CONFIG_DIR) / key).glob("*.yaml"))
            raise QnnrunError(f"{arg} is not valid: choose one of {', '.join(options)} "
                              f"(several, comma-separated, with -m)")
        match = _OVERRIDE.match(arg)
        if match and (match["key"] in groups or match["key"].startswith("hydra/")):
            values = [f"'{v}'" if _NON_STRING.fullmatch(v) else v for v in match["value"].split(",")]
            arg = f"{match['key']}=" + ",".join(values)
        out.append(arg)
    return out


def quote_paths(args: list[str]) -> list[str]:
    """Quote an override's value that names an existing file or folder but does not read as that
    one plain string in Hydra's grammar. A sweep job's folder (``init_from=outputs/multirun/<date>/
    <time>/0_bits='2',method=fp``) holds ``=``, ``,`` and quotes: Hydra would fail on it with a syntax
    error or read a sweep list."""
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


def check_group_choices(args: list[str]) -> None:
    """Raise a one-line :class:`QnnrunError` for a config-group choice that ``conf/`` does not have
    (``method=magic``; each value of a sweep list ``method=ste,magic``), naming the valid ones:
    Hydra's own message spans many lines. Skipped when ``hydra.searchpath`` may add options."""
    if any("searchpath" in arg for arg in args):
        return
    for arg in args:
        match = _OVERRIDE.match(arg)
        # hydra/...: Hydra's plugins bring options of their own (hydra/launcher=submitit_local).
        if not match or match["key"].startswith("hydra") or not (Path(CONFIG_DIR) / match["key"]).is_dir():
            continue
        options = sorted((p.stem for p in (Path(CONFIG_DIR) / match["key"]).glob("*.yaml")),
                         key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))
        for value in match["value"].split(","):
            if value.strip("'") not in (*options, "null"):
                raise QnnrunError(f"{match['key']}={value} is not valid: choose one of {', '.join(options)}")


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
        sys.exit(2)
    try:
        check_group_choices(argv[1:])
        sys.argv = [sys.argv[0], *quote_paths(quote_numeric_groups(argv[1:]))]
    except QnnrunError as error:
        print(f"qnnrun: error: {error}", file=sys.stderr)
        sys.exit(1)
    if command == "train":
        from qnnrun.sweep import resume_sweep_args

        # A joblib worker stopped by a signal leaves its semaphores to loky's resource tracker (a process
        # started later, reading this variable), which unlinks them and warns about each: noise after
        # the jobs' own "stopped by" lines.
        quiet, given = "ignore:resource_tracker", os.environ.get("PYTHONWARNINGS", "")
        if quiet not in given.split(","):
            os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [given, quiet]))

        sys.argv = [sys.argv[0], *resume_sweep_args(sys.argv[1:])]
    COMMANDS[command]()
    if _failures:
        print(f"qnnrun: {len(_failures)} job(s) of the sweep failed (error and config in their summary.json, "
              f"listed by qnnrun report)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    # `python -m qnnrun.cli`: run the importable module, whose state (_failures) callbacks update.
    from qnnrun.cli import main as module_main

    module_main()
