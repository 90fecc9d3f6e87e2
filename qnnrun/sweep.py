"""Sweeps that survive failures and interruptions: failure records, finished-run skipping, resume.

Every job of ``qnnrun train`` ends with a ``summary.json`` in its folder: ``"status": "done"`` from
the engine, or ``"status": "failed"`` written here with the error line, the job's overrides and
its config. Because the record is a file, it works the same whether the jobs ran in this process
(basic launcher), in joblib workers or in submitit jobs; :class:`SweepFailures` reads the records
back in the launching process when the sweep ends and the command exits non-zero.

``resume=true`` in a sweep reuses the sweep folder of an earlier run of the same command
(:func:`resume_sweep_args`), skips its finished jobs (:func:`finished_summary`) and lets the
engine resume the others from their ``last.ckpt``.

A job's folder is ``<job number>_<what tells the job apart>`` (:func:`job_folder_name`); a job that an
earlier run of the sweep left under another name (before, ``<job number>_<every override>``) is
continued in that folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from qnnrun.checkpoint import load_checkpoint, write_text_atomic
from qnnrun.errors import QnnrunError
from qnnrun.methods import build_method
from qnnrun.runs import (FAILURES, HYDRA_SUBDIR, LAST_CKPT, MULTIRUN_CONFIG, SUMMARY, SWEEP_FILES, asks_for_sweep,
                         bounded_name, claim_run, fixed_width_settings, identity_fields, is_free, name_parts,
                         name_settings, noted_failures, read_summary, remove_if_disposable, run_identity)

log = logging.getLogger("qnnrun")

# A copy of a job's Hydra files kept while a resumed sweep's job starts (keep_job_configs).
KEPT_CONFIGS = HYDRA_SUBDIR + ".kept"
# Where `resume=true` looks for earlier sweeps: the default hydra.sweep.dir lives under it.
OUTPUTS_ROOT = Path("outputs")


def finished_summary(run_dir: Path, epochs: int) -> dict[str, Any] | None:
    """The summary of a run in ``run_dir`` that finished ``epochs`` epochs, else ``None``.

    A done run of a different number of epochs is not finished for this config: the engine refuses
    to resume it unless ``extend=true`` asks for more epochs (:func:`qnnrun.runs.check_resume_config`).
    """
    summary = read_summary(run_dir)
    if summary is None or summary.get("status") != "done" or summary.get("epochs") != epochs:
        return None
    return summary


def _record(run_dir: Path, cfg: DictConfig, overrides: list[str], **fields: Any) -> None:
    """Write ``run_dir/summary.json`` holding ``fields``, the overrides, the folder and the config,
    unless it holds a finished run's summary, which no other record replaces.

    The identifying keys (method, model, dataset, bits_w, bits_a, seed, epochs) are copied from the
    config when it has them, the widths as the method runs them (``method=fp bits=4``: 32), so a
    report can place the record beside its finished siblings.
    """
    existing = read_summary(run_dir)
    if existing is not None and existing.get("status") == "done":
        log.warning("%s holds a finished run: its summary.json is kept (not replaced by a %s record)",
                    run_dir, fields.get("status"))
        return
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # the error may be an unresolvable value: keep the config as written
        config = OmegaConf.to_container(cfg, resolve=False)
    keys = {"method": "method.name", "model": "model.name", "dataset": "dataset.name", "bits_w": "bits.w",
            "bits_a": "bits.a", "seed": "seed", "epochs": "trainer.epochs"}
    record: dict[str, Any] = dict(fields)
    for name, dotted in keys.items():
        try:
            record[name] = OmegaConf.select(cfg, dotted, default=None)
        except Exception:
            record[name] = None
    try:  # the widths the method runs at (fp: 32, bnn: 1, whatever bits says), as a finished run records them
        method = build_method(cfg)
        record["bits_w"], record["bits_a"] = method.weight_bits, method.act_bits
        if method.mixed:  # and each layer's, so that a report groups it with its finished siblings
            from qnnrun.evaluate import config_costs
            from qnnrun.metrics.bops import layer_widths

            record["layer_bits"] = layer_widths(config_costs(cfg)[0])
    except Exception:  # the failure may be in the method's own config: keep the config's bits
        pass
    record.update(overrides=overrides, run_dir=str(run_dir.resolve()), config=config)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / SUMMARY, json.dumps(record, indent=2, default=str) + "\n")


def record_failure(run_dir: Path, cfg: DictConfig, error: BaseException, overrides: list[str]) -> None:
    """Record the failed run in ``run_dir`` (``"status": "failed"``, the error line; see :func:`_record`)."""
    text = str(error).strip()
    if isinstance(error, QnnrunError):  # already a user-facing line
        message = text.splitlines()[0] if text else type(error).__name__
    else:
        message = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    _record(run_dir, cfg, overrides, status="failed", error=message)


def record_duplicate(run_dir: Path, cfg: DictConfig, first: Path, overrides: list[str]) -> None:
    """Record that the job in ``run_dir`` is the same run as ``first``'s (``"status": "duplicate"``,
    ``"same_as"``; see :func:`_record`): it was not trained again, and a report counts it once. A
    resumed sweep leaves such a record as it is."""
    existing = read_summary(run_dir)
    if existing is None or existing.get("status") != "duplicate" or existing.get("same_as") != str(first):
        _record(run_dir, cfg, overrides, status="duplicate", same_as=str(first))


def same_run_in_sweep(cfg: DictConfig, sweep_dir: Path, run_dir: Path) -> Path | None:
    """The folder of the job of this sweep that trains the same run as ``cfg`` (the first to claim
    it, :func:`qnnrun.runs.claim_run`), or ``None`` when this job trains it.

    Two jobs are the same run when their resolved configs agree on everything that decides what is
    computed (:func:`qnnrun.runs.run_identity`): a float run in a bits sweep is one run.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    return claim_run(sweep_dir, run_identity(config, build_method(cfg).quantizes), run_dir)


def kept_duplicate(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The earlier job that a resumed job's duplicate record names, when that job's run is finished
    and is still this job's run: the options both configs hold are equal by value
    (:func:`qnnrun.runs.identity_fields`), so the record stands although this version's
    :func:`qnnrun.runs.run_identity` may differ from the one the sweep claimed with. ``None``
    otherwise (the job claims its run again)."""
    record = read_summary(run_dir)
    if record is None or record.get("status") != "duplicate" or not record.get("same_as"):
        return None
    first = Path(str(record["same_as"]))
    if finished_summary(first, cfg.trainer.epochs) is None or not (first / LAST_CKPT).is_file():
        return None
    quantizes = build_method(cfg).quantizes
    mine = identity_fields(OmegaConf.to_container(cfg, resolve=True), quantizes)
    theirs = identity_fields(load_checkpoint(first / LAST_CKPT)["config"], quantizes)
    return first if all(mine[key] == theirs[key] for key in mine.keys() & theirs.keys()) else None


def failed_runs(folder: Path) -> list[tuple[Path, str]]:
    """(run folder, error line) of every failure record under ``folder``, sorted by folder."""
    failed = []
    for path in sorted(folder.rglob(SUMMARY)):
        summary = read_summary(path.parent)
        if summary is not None and summary.get("status") == "failed":
            failed.append((path.parent.resolve(), str(summary.get("error", "unknown error"))))
    return failed


def keep_job_configs(sweep_dir: Path) -> None:
    """Before a resumed sweep's jobs start: copy each earlier job's ``.hydra/`` (the config and
    overrides its run was trained with) to ``.hydra.kept/``, since Hydra writes every job's
    ``.hydra/`` anew before the job can tell whether it continues that run or refuses to."""
    for hydra in sweep_dir.glob(f"*/{HYDRA_SUBDIR}"):
        if hydra.is_dir():
            shutil.copytree(hydra, hydra.parent / KEPT_CONFIGS, dirs_exist_ok=True)


def restore_job_config(run_dir: Path) -> None:
    """At the start of a resumed sweep's job: put back the ``.hydra/`` its earlier run wrote
    (:func:`keep_job_configs`), so that neither a continued nor a refused run has its records
    rewritten; a job new to the sweep keeps the one Hydra wrote."""
    kept = run_dir / KEPT_CONFIGS
    if kept.is_dir():
        shutil.rmtree(run_dir / HYDRA_SUBDIR, ignore_errors=True)
        os.replace(kept, run_dir / HYDRA_SUBDIR)


class SweepFailures(Callback):
    """Registered in ``conf/train.yaml`` (``hydra.callbacks``): when a multirun ends, the launching
    process reads the failure records and notes of its jobs (:func:`qnnrun.runs.note_failure`),
    whichever launcher ran them, names them and exits 1 when there is any.

    ``keep_folder=false`` (``conf/sensitivity.yaml``, whose jobs write beside their checkpoints and
    remove their empty job folders) then removes the sweep folder when it holds only Hydra's
    ``multirun.yaml`` and the failure notes."""

    def __init__(self, keep_folder: bool = True) -> None:
        self.keep_folder = keep_folder

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        shutil.rmtree(sweep_dir / FAILURES, ignore_errors=True)  # a resumed sweep's old notes
        if config.get("resume") is True:
            keep_job_configs(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failures = {**dict(failed_runs(sweep_dir)), **noted_failures(sweep_dir)}
        for run_dir, error in sorted(failures.items()):
            log.error("job failed: %s: %s", run_dir, error)
        if not self.keep_folder:
            remove_if_disposable(sweep_dir, Path.cwd(), SWEEP_FILES)
        if failures:
            where = ("error and config in their summary.json, listed by qnnrun report" if self.keep_folder else
                     "each job's error line is above")
            print(f"qnnrun: {len(failures)} job(s) of the sweep failed ({where})", file=sys.stderr, flush=True)
            sys.exit(1)


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
    starts) holds the same task overrides as ``overrides``, ``resume=``, ``hydra.*`` and the settings
    that do not change what a run computes (``trainer.progress``, threads, ...) aside."""
    wanted = run_overrides(overrides)
    if wanted is None or not root.is_dir():
        return None
    matches = []
    for path in root.rglob(MULTIRUN_CONFIG):
        try:
            saved = OmegaConf.load(path).hydra.overrides.task
        except Exception:  # not a Hydra sweep record: not ours to judge
            continue
        if run_overrides([str(o) for o in saved]) == wanted:
            matches.append(path)
    return max(matches, key=lambda p: p.stat().st_mtime).parent if matches else None


def constant_keys(sweep_dir: Path) -> set[str]:
    """The keys that take one value in every job of the sweep in ``sweep_dir``, read from its
    ``multirun.yaml`` (the sweeper's ``params``, then the command line's overrides, combined as
    Hydra's basic sweeper does); none when that cannot be read."""
    try:
        saved = OmegaConf.load(sweep_dir / MULTIRUN_CONFIG)
        params = OmegaConf.select(saved, "hydra.sweeper.params", default=None)
        lines = [f"{key}={value}" for key, value in (params.items_ex(resolve=False) if params else [])]
        parsed = OverridesParser.create().parse_overrides([*lines, *map(str, saved.hydra.overrides.task)])
    except Exception:  # no such file, not a Hydra sweep record, another sweeper's params
        return set()
    values: dict[str, int] = {}  # the last override of a key wins, as in the sweep
    for override in parsed:
        try:
            count = len(set(override.sweep_string_iterator())) if override.is_sweep_override() else 1
        except HydraException:  # an interval (optuna): many values
            count = 2
        values[override.key_or_group] = count
    return {key for key, count in values.items() if count == 1}


def job_folder_name(num: int, overrides: list[str], sweep_dir: Path) -> str:
    """The folder name of job ``num`` (task ``overrides``) of the sweep in ``sweep_dir``
    (``hydra.sweep.subdir`` in ``conf/train.yaml``): ``<num>_`` and the job's settings that other jobs
    of the sweep set otherwise (:func:`qnnrun.runs.name_parts`; all of them when none do), e.g.
    ``3_ste_w2a2_seed1`` (a float job's bits left out, a bnn job's its own:
    :func:`~qnnrun.runs.fixed_width_settings`). When that folder does not exist but an earlier run of the
    same job left one under another name (``3_bits='2',method=ste,seed=1,...`` or ``1_fp_w4a4`` from
    before), that folder's name: a resumed sweep continues each job where it is and never starts a second
    copy beside it."""
    settings = fixed_width_settings(name_settings(overrides))
    constant = constant_keys(sweep_dir)
    distinct = {key: value for key, value in settings.items() if key not in constant}
    name = bounded_name(str(num), name_parts(distinct or settings))
    if (sweep_dir / name).exists():
        return name
    return _earlier_folder(num, overrides, sweep_dir) or name


def run_overrides(overrides: list[str]) -> list[str] | None:
    """:func:`_canonical` without the settings that do not change what a run computes."""
    canonical = _canonical(overrides)
    return None if canonical is None else [o for o in canonical if not is_free(o.partition("=")[0].lstrip("+~"))]


def _earlier_folder(num: int, overrides: list[str], sweep_dir: Path) -> str | None:
    """The name of a folder ``<num>_...`` in ``sweep_dir`` whose ``.hydra/overrides.yaml`` holds the
    same run as ``overrides``, or ``None``."""
    wanted = run_overrides(overrides)
    if wanted is None:
        return None
    for folder in sorted(sweep_dir.glob(f"{num}_*")):
        if saved_run_overrides(folder) == wanted:
            return folder.name
    return None


def saved_run_overrides(folder: Path) -> list[str] | None:
    """:func:`run_overrides` of the job in ``folder`` (its ``.hydra/overrides.yaml``), or ``None`` where
    there is no readable Hydra record (not a job's folder)."""
    try:
        saved = [str(o) for o in OmegaConf.load(folder / HYDRA_SUBDIR / "overrides.yaml")]
    except Exception:  # no Hydra record there (or not a list)
        return None
    return run_overrides(saved)


def _preset_sweeps(overrides: list[str]) -> bool:
    """Whether an ``experiment=NAME`` of ``overrides`` is a preset that sweeps by itself
    (``hydra.mode: MULTIRUN`` in ``conf/experiment/NAME.yaml``, as ``mp_search``)."""
    from qnnrun import CONFIG_DIR

    for override in overrides:
        key, _, name = override.partition("=")
        preset = CONFIG_DIR / "experiment" / f"{name}.yaml"
        if key.lstrip("+") == "experiment" and preset.is_file():
            try:
                return OmegaConf.select(OmegaConf.load(preset), "hydra.mode", default=None) == "MULTIRUN"
            except Exception:  # an unreadable preset: Hydra reports it when it composes
                return False
    return False


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
        if asks_for_sweep(args) or _preset_sweeps(overrides):
            print(f"qnnrun: resume=true: no earlier sweep of these overrides under {root}/: starting a new sweep "
                  f"(give hydra.sweep.dir=DIR to continue one elsewhere)", file=sys.stderr, flush=True)
        return args
    print(f"qnnrun: resume=true: continuing the sweep in {folder}", file=sys.stderr, flush=True)
    return [*args, f"hydra.sweep.dir='{folder}'"]
