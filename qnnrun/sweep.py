"""Sweeps that survive failures and interruptions: failure records, finished-run skipping, resume.

Every job of ``qnnrun train`` ends with a ``summary.json`` in its folder: ``"status": "done"`` from
the engine, or ``"status": "failed"`` written here with the error line, the job's overrides and
its config. Because the record is a file, it works the same whether the jobs ran in this process
(basic launcher), in joblib workers or in submitit jobs; :class:`SweepFailures` reads the records
back in the launching process when the sweep ends and the command exits non-zero.

``resume=true`` in a sweep reuses the sweep folder of an earlier run of the same command
(:func:`resume_sweep_args`), skips its finished jobs (:func:`finished_summary`) and lets the
engine resume the others from their ``last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from qnnrun.checkpoint import write_text_atomic
from qnnrun.errors import QnnrunError

log = logging.getLogger("qnnrun")

# Where `resume=true` looks for earlier sweeps: the default hydra.sweep.dir lives under it.
OUTPUTS_ROOT = Path("outputs")
SUMMARY = "summary.json"
# A run's step curves: TensorBoard events of their own in this sub-folder of the run folder.
STEP_CURVES = "steps"


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/summary.json`` as a dict, or ``None`` when absent or unreadable (a run cut off mid-write)."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def finished_summary(run_dir: Path, epochs: int) -> dict[str, Any] | None:
    """The summary of a run in ``run_dir`` that finished ``epochs`` epochs, else ``None``.

    A done run trained for a different number of epochs is not finished for this config: the
    engine resumes it from ``last.ckpt`` (a longer schedule continues the run).
    """
    summary = read_summary(run_dir)
    if summary is None or summary.get("status") != "done" or summary.get("epochs") != epochs:
        return None
    return summary


def record_failure(run_dir: Path, cfg: DictConfig, error: BaseException, overrides: list[str]) -> None:
    """Write ``run_dir/summary.json`` with ``"status": "failed"``, the error line, overrides and config.

    The identifying keys (method, model, dataset, bits_w, bits_a, seed, epochs) are copied from the
    config when it has them, so a report can place the failed run beside its finished siblings.
    """
    text = str(error).strip()
    if isinstance(error, QnnrunError):  # already a user-facing line
        message = text.splitlines()[0] if text else type(error).__name__
    else:
        message = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # the error may be an unresolvable value: keep the config as written
        config = OmegaConf.to_container(cfg, resolve=False)
    keys = {"method": "method.name", "model": "model.name", "dataset": "dataset.name", "bits_w": "bits.w",
            "bits_a": "bits.a", "seed": "seed", "epochs": "trainer.epochs"}
    record: dict[str, Any] = {"status": "failed", "error": message}
    for name, dotted in keys.items():
        try:
            record[name] = OmegaConf.select(cfg, dotted, default=None)
        except Exception:
            record[name] = None
    record.update(overrides=overrides, config=config)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / SUMMARY, json.dumps(record, indent=2, default=str) + "\n")


def failed_runs(folder: Path) -> list[tuple[Path, str]]:
    """(run folder, error line) of every failure record under ``folder``, sorted by folder."""
    failed = []
    for path in sorted(folder.rglob(SUMMARY)):
        summary = read_summary(path.parent)
        if summary is not None and summary.get("status") == "failed":
            failed.append((path.parent.resolve(), str(summary.get("error", "unknown error"))))
    return failed


class SweepFailures(Callback):
    """Registered in ``conf/train.yaml`` (``hydra.callbacks``): when a multirun ends, collect the
    failure records of its jobs in the launching process, whichever launcher ran them."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from qnnrun import cli

        for run_dir, error in failed_runs(Path(str(config.hydra.sweep.dir))):
            if str(run_dir) not in cli._failures:
                log.error("job failed: %s: %s", run_dir, error)
                cli._failures.append(str(run_dir))


def _canonical(overrides: list[str]) -> list[str] | None:
    """Task overrides (no ``hydra.*``, no ``resume``) in Hydra's canonical spelling, sorted; ``None``
    when they do not parse (Hydra will then report the error itself)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return None
    return sorted(f"{o.get_key_element()}={_value_text(o)}" for o in parsed
                  if not o.is_hydra_override() and o.key_or_group != "resume")


def _value_text(override: Override) -> str:
    """The override's value spelled the same way however it was typed (spaces, quotes)."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    try:
        return ",".join(override.sweep_string_iterator())
    except HydraException:  # range/interval sweeps: as typed
        return override.input_line.partition("=")[2]


def _resume_requested(overrides: list[str]) -> bool:
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return False
    return any(o.key_or_group == "resume" and o.value() is True for o in parsed)


def find_sweep(overrides: list[str], root: Path = OUTPUTS_ROOT) -> Path | None:
    """The newest sweep folder under ``root`` whose ``multirun.yaml`` (written by Hydra when a sweep
    starts) holds the same task overrides as ``overrides``, ``resume=`` and ``hydra.*`` aside."""
    wanted = _canonical(overrides)
    if wanted is None or not root.is_dir():
        return None
    matches = []
    for path in root.rglob("multirun.yaml"):
        try:
            saved = OmegaConf.load(path).hydra.overrides.task
        except Exception:  # not a Hydra sweep record: not ours to judge
            continue
        if _canonical([str(o) for o in saved]) == wanted:
            matches.append(path)
    return max(matches, key=lambda p: p.stat().st_mtime).parent if matches else None


def resume_sweep_args(args: list[str], root: Path = OUTPUTS_ROOT) -> list[str]:
    """``args`` of ``qnnrun train``, plus ``hydra.sweep.dir=<earlier sweep>`` when they ask for
    ``resume=true``, name no sweep folder themselves, and an earlier sweep of the same overrides exists.

    Hydra gives every sweep a new timestamped folder; this is what lets the same command find the
    folders of its earlier, interrupted run again.
    """
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    if not _resume_requested(overrides) or any(a.lstrip("+~").startswith("hydra.sweep.dir=") for a in overrides):
        return args
    folder = find_sweep(overrides, root)
    if folder is None:
        return args
    print(f"qnnrun: resume=true: continuing the sweep in {folder}", file=sys.stderr, flush=True)
    return [*args, f"hydra.sweep.dir='{folder}'"]
