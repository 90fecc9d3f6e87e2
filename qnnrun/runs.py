"""The run folder: what a run writes there, when it may write, and how a run is continued.

A run folder holds exactly one run. Its records are never overwritten by a different run:

- a fresh run refuses a folder that already holds a run (:func:`refuse_existing_run`);
- a resume continues the run with its own saved config: only the settings in :data:`FREE_KEYS`
  (where and how fast it runs, not what it computes) may be given anew, and ``trainer.epochs`` may
  grow with ``extend=true``, which the run records (:func:`check_resume_config`, :func:`resumed_config`);
- a single run that fails before it has written anything of its own leaves no folder behind
  (:func:`remove_if_disposable`); a sweep job keeps its failure record;
- two jobs of one sweep that would compute the same run (a float run in a bits sweep) train once:
  the later job's record points at the first (:func:`run_identity`, :func:`claim_run`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from qnnrun.checkpoint import (FORMAT, LAST_CKPT, check_output_folder, checkpoint_file, load_checkpoint,
                               write_text_atomic)
from qnnrun.config import PRECISIONS, override_text
from qnnrun.data import DataInfo
from qnnrun.errors import QnnrunError
from qnnrun.methods import METHODS, Method, fixed_bits
from qnnrun.quant.convert import BIT_WIDTHS, FLOAT_BITS, LAYER_POLICIES
from qnnrun.schema import saved_config

log = logging.getLogger("qnnrun")

BEST_CKPT = "best.ckpt"
SUMMARY = "summary.json"
# A resumed run's summary.json from before (a finished run's before extend=true, a failure record).
PREVIOUS_SUMMARY = "summary.previous.json"
# A run's step curves: TensorBoard events of their own in this sub-folder of the run folder.
STEP_CURVES = "steps"
# TensorBoard tags of the per-epoch curves: history key -> tag. Constant costs are no curves: they
# are written once, as text and as HParams columns (log_costs, log_hparams).
EPOCH_TAGS = {"test_acc": "test/acc", "test_best_acc": "test/best_acc", "test_vs_init": "test/vs_init",
              "test_loss": "test/loss", "test_top5": "test/top5", "train_acc": "train/acc",
              "train_loss": "train/loss", "train_distill": "train/distill", "lr": "train/lr",
              "epoch_time_s": "time/epoch_s", "images_per_s": "time/images_per_s", "compile_s": "time/compile_s"}
# The method's scalars (``quant/<name>`` in a run's history) as curves in the train section: TensorBoard
# orders its sections by the tag's first part, alphabetically, and the first a user sees is test (accuracy).
QUANT_TAG_PREFIX = "train/quant/"
# The step curves' section (trainer.log_every_steps), after train's for the same reason.
STEP_TAG_PREFIX = "train_step/"
# The HParams view's metrics: curves above, whose last value is the run's (final test accuracy, best
# so far, change from the init_from net's), so no scalar is written for HParams alone.
HPARAM_METRICS = ("test/acc", "test/best_acc", "test/vs_init")
# The folder Hydra writes a run's config and overrides into (hydra.output_subdir).
HYDRA_SUBDIR = ".hydra"
# What Hydra writes into a run folder before the run starts: a folder holding nothing else holds no run.
HYDRA_FILES = {HYDRA_SUBDIR, "train.log"}
# The lock a training holds on its run folder while it runs (lock_run_dir); not a record of the run.
RUN_LOCK = ".qnnrun-lock"
HYDRA_CONFIGS = {"config.yaml", "hydra.yaml", "overrides.yaml"}
# Where a sweep notes which job trains each distinct run (one file per run identity).
CLAIMS = ".qnnrun-claims"
# Where a sweep's jobs note that they failed (one file per job folder), whichever process ran them.
FAILURES = ".qnnrun-failures"
# The sweep's config, written by Hydra into the sweep folder when the sweep starts.
MULTIRUN_CONFIG = "multirun.yaml"
# What a run folder, and a sweep folder whose jobs wrote nothing there, hold of Hydra's and qnnrun's
# bookkeeping alone: a folder holding nothing else holds no run (remove_if_disposable).
RUN_FILES = frozenset(HYDRA_FILES | {RUN_LOCK})
SWEEP_FILES = frozenset({MULTIRUN_CONFIG, FAILURES})

# Settings that decide where and how fast a run computes, not what it computes: a resume may give
# them anew. Every other key of the config (and each group choice) is the run's own.
FREE_KEYS = ("trainer.device", "trainer.num_threads", "trainer.progress", "trainer.compile",
             "trainer.recompute_quant", "trainer.log_every_steps", "dataset.num_workers", "paths")
# Keys that say how this command treats the run, not what the run is.
COMMAND_KEYS = ("resume", "extend")


def is_free(key: str) -> bool:
    """Whether the dotted config ``key`` may differ between a run and its resume (:data:`FREE_KEYS`)."""
    return any(key == free or key.startswith(free + ".") for free in (*FREE_KEYS, *COMMAND_KEYS))


# Options whose value is a mapping of the user's own keys, ordered (quant.layer_bits: the first
# matching rule wins): a config holds them whole, never as options of their own.
WHOLE_VALUE_KEYS = ("quant.layer_bits",)


def _flatten(value: Any, prefix: str = "", whole: Sequence[str] = ()) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; a non-mapping value, and the value of a key of ``whole``,
    maps to itself under ``prefix``."""
    if prefix in whole or not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key), whole))
    return flat


def _ordered(value: Any) -> Any:
    """A mapping as its (key, value) items in order, nested alike: compared so, equal means in the same order too."""
    return tuple((key, _ordered(item)) for key, item in value.items()) if isinstance(value, Mapping) else value


def check_resume_config(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path,
                        extend: bool = False) -> None:
    """A checkpoint resumes only the run it was written by: every key both configs hold must be
    equal, except :data:`FREE_KEYS`; ``trainer.epochs`` may grow when ``extend`` is true.

    An option only the current config holds was added to qnnrun after the checkpoint was written:
    the run resumes with its current value and a warning names it (likewise for one that was removed).
    """
    before, now = _flatten(saved, whole=WHOLE_VALUE_KEYS), _flatten(current, whole=WHOLE_VALUE_KEYS)
    epochs = "trainer.epochs"
    for name in sorted(before.keys() & now.keys()):
        if is_free(name) or _ordered(before[name]) == _ordered(now[name]):
            continue
        if name == epochs and extend:
            if not (isinstance(now[name], int) and isinstance(before[name], int) and now[name] > before[name]):
                raise QnnrunError(f"cannot extend {path}: extend=true needs trainer.epochs above the run's "
                                  f"{before[name]}, got {now[name]}")
            continue
        hint = (" (to train it longer, add extend=true)" if name == epochs else "")
        raise QnnrunError(f"cannot resume from {path}: its {name} was {override_text(before[name])}, this run has "
                          f"{override_text(now[name])}; a resume continues the same run{hint}")
    added = {name: now[name] for name in now.keys() - before.keys() if not is_free(name)}
    if added:
        log.warning("%s predates the options %s: resuming with these values",
                    path, ", ".join(f"{name}={value}" for name, value in sorted(added.items())))
    removed = sorted(name for name in before.keys() - now.keys() if not is_free(name))
    if removed:
        log.warning("%s sets options this version no longer has, ignored: %s", path, ", ".join(removed))


def check_finished_config(run_dir: Path, cfg: DictConfig) -> None:
    """A resume that finds its run finished checks it is the same run all the same (a sweep resumed
    after its preset changed must not count the old runs as the new ones)."""
    ckpt = run_dir / LAST_CKPT
    if ckpt.is_file():
        check_resume_config(load_checkpoint(ckpt)["config"], OmegaConf.to_container(cfg, resolve=True), ckpt)


def resume_checkpoint(resume: Any) -> Path | None:
    """The checkpoint ``resume=PATH`` names (``PATH`` itself, or ``last.ckpt`` in a run folder);
    ``None`` for ``resume=true/false``, which are not paths."""
    if isinstance(resume, bool) or resume is None:
        return None
    try:
        return checkpoint_file(str(resume), "resume")
    except QnnrunError as error:
        raise QnnrunError(f"{error}; or resume=true for the run folder's own") from None


def resolve_resume(resume: Any, run_dir: Path) -> tuple[Path | None, Path]:
    """The checkpoint to resume from (or ``None``) and the folder the run writes into."""
    if resume is False or resume is None:
        return None, run_dir
    if resume is True:
        last = run_dir / LAST_CKPT
        if not last.is_file():
            log.info("resume=true but %s has no %s: starting a new run", run_dir, LAST_CKPT)
            return None, run_dir
        return last, run_dir
    ckpt = resume_checkpoint(resume)
    assert ckpt is not None
    return ckpt, ckpt.parent


def resumed_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """For ``resume=PATH``: the run's own saved config, with the :data:`FREE_KEYS` given on the
    command line (``overrides``, Hydra's task overrides) and, with ``extend=true``, ``trainer.epochs``.

    Any other override would make the resume a different run: a one-line error names it.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    ckpt = resume_checkpoint(cfg.resume)
    assert ckpt is not None
    saved = load_checkpoint(ckpt)["config"]
    extend = cfg.get("extend") is True
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    given = [o.key_or_group for o in parsed]
    for override in parsed:
        key = override.key_or_group
        if is_free(key) or (key == "trainer.epochs" and extend):
            continue
        before = OmegaConf.select(OmegaConf.create(saved), key, default=None) if "/" not in key else None
        was = f" (the run's {_setting_text(key, before, OmegaConf.select(cfg, key, default=None))})" \
            if before is not None else ""
        typed = override.input_line if override.is_delete() else f"{key}={override_text(override.value())}"
        raise QnnrunError(f"{typed} cannot be given with resume={cfg.resume}: a resume continues the run with its "
                          f"own config{was}; beside it give only {', '.join(FREE_KEYS)}, or trainer.epochs=N "
                          f"extend=true to train it longer")
    resumed = saved_config(saved)
    for key in given:
        if key in ("resume", "extend"):
            continue
        OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
    OmegaConf.update(resumed, "resume", str(cfg.resume), force_add=True)
    OmegaConf.update(resumed, "extend", extend, force_add=True)
    return resumed


def _setting_text(key: str, run: Any, given: Any) -> str:
    """The run's value of ``key`` as overrides, where the value ``given`` differs (all of it where none
    does): ``method=ste`` for a group's options (by their name), ``bits.w=4 bits.a=4``, ``optim.lr=0.1``."""
    old, new = (_flatten(OmegaConf.to_container(v) if isinstance(v, DictConfig) else v, key, WHOLE_VALUE_KEYS)
                for v in (run, given))
    if f"{key}.name" in old:
        return f"{key}={old[f'{key}.name']}"
    differ = [name for name in old if name in new and _ordered(new[name]) != _ordered(old[name])] or list(old)
    return " ".join(f"{name}={override_text(old[name])}" for name in differ)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/summary.json`` as a dict, or ``None`` when absent or unreadable (a run cut off mid-write)."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def retire_summary(run_dir: Path) -> None:
    """Before a resumed run trains again: its ``summary.json`` (a finished run's, before ``extend=true``;
    a failure record) no longer tells the folder's state, so it is kept as :data:`PREVIOUS_SUMMARY`,
    and until the run ends a report reads the folder as unfinished, from its checkpoint and curves."""
    if (run_dir / SUMMARY).is_file():
        os.replace(run_dir / SUMMARY, run_dir / PREVIOUS_SUMMARY)


def lock_run_dir(run_dir: Path) -> Any:
    """Hold an exclusive lock on ``run_dir`` for as long as the returned file stays open (the process
    that trains the run: the lock goes with the process, however it ends); a second training of the
    same folder (the same resume started twice) is refused with one line instead of training beside it.
    The holder then removes the temporary files of checkpoint writes a killed process left behind."""
    import fcntl

    handle = open(run_dir / RUN_LOCK, "a+")  # noqa: SIM115 - held open for the run's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise QnnrunError(f"{run_dir} is being trained by {holder}: one process per run folder (wait for it, "
                          f"or stop it and resume)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    for stale in run_dir.glob(".*.tmp"):  # checkpoint writes a killed process left behind
        stale.unlink(missing_ok=True)
    return handle


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run's records: a checkpoint, or a summary of a finished run."""
    summary = read_summary(run_dir)
    return (run_dir / LAST_CKPT).is_file() or (summary is not None and summary.get("status") == "done")


def refuse_existing_run(run_dir: Path) -> None:
    """A fresh run (no ``resume``) never writes over another run's records."""
    if holds_run(run_dir):
        raise QnnrunError(f"{run_dir} already holds a run: continue it with {continue_command(run_dir)}, or give "
                          f"this run another folder (hydra.run.dir=DIR)")


def prepare_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` and check that files can be written there (before any work is done)."""
    check_output_folder(run_dir, "hydra.run.dir")


# Run folder names: the settings that tell a run apart, the most telling first, as short parts that any
# file system, shell and Hydra override takes unquoted; a name longer than NAME_LENGTH characters names
# the settings that do not fit by a hash of them, a value longer than VALUE_LENGTH is cut likewise.
BITS_KEYS = ("bits", "bits.w", "bits.a")
NAME_FIRST = ("method", *BITS_KEYS, "seed")
NAME_LENGTH = 100
VALUE_LENGTH = 32
HASH_LENGTH = 8


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def _safe(text: str) -> str:
    """``text`` with each run of characters other than ASCII letters, digits and ``_ . + -`` as one ``-``,
    none at either end but a number's sign (``seed=-1`` is ``seed-1``, not ``seed1``)."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-")
    return ("-" if re.match(r"-[0-9.]", text) else "") + safe if safe else "none"


def _name_value(value: Any) -> str:
    """A setting's value in a folder name: a path as the name of the run folder (or file) it names,
    a list as its items, at most :data:`VALUE_LENGTH` characters (a longer value cut, with its hash)."""
    if value is None or isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, Mapping):
        text = "-".join(f"{key}-{_name_value(item)}" for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        text = "-".join(_name_value(item) for item in value)
    else:
        text = str(value)
    if "/" in text:  # a checkpoint: its run folder's name (init_from=outputs/.../0_fp_seed0/last.ckpt)
        text = short_run_name(text.rstrip("/"))
    text = _safe(text)
    if len(text) > VALUE_LENGTH:
        text = f"{text[:VALUE_LENGTH - HASH_LENGTH - 1]}-{_hash(text)}"
    return text


def name_settings(overrides: Sequence[str]) -> dict[str, Any]:
    """Key -> value of the task ``overrides`` (Hydra's ``key=value`` lines) that decide what a run
    computes: :data:`FREE_KEYS` and :data:`COMMAND_KEYS` are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.key_or_group: o.value() for o in parsed if not o.is_hydra_override() and not is_free(o.key_or_group)}


def name_parts(settings: Mapping[str, Any]) -> list[str]:
    """The parts of a folder name for ``settings`` (key -> value): the method, the bits (``w2a4``;
    ``w2`` when only ``bits.w`` is set), the seed (``seed1``), then the other settings by key, a config
    group's choice as itself (``resnet20``), any other key as ``key-value`` (``optim.lr-0.05``)."""
    from qnnrun import CONFIG_DIR

    text = {key: _name_value(value) for key, value in settings.items()}
    weight, act = text.get("bits.w", text.get("bits")), text.get("bits.a", text.get("bits"))
    bits = (f"w{weight}" if weight else "") + (f"a{act}" if act else "")
    parts = [text["method"]] if "method" in text else []
    parts += [bits] if bits else []
    parts += [f"seed{text['seed']}"] if "seed" in text else []
    for key in sorted(text.keys() - set(NAME_FIRST)):
        parts.append(text[key] if (CONFIG_DIR / key).is_dir() else f"{_safe(key)}-{text[key]}")
    return parts


def bounded_name(prefix: str, parts: Sequence[str]) -> str:
    """``prefix_part_part...`` in at most :data:`NAME_LENGTH` characters: the parts that do not fit are
    replaced by ``etc-<hash of them>``."""
    name = "_".join([prefix, *parts])
    if len(name) <= NAME_LENGTH:
        return name
    tail = len("_etc-") + HASH_LENGTH
    kept = [prefix]
    for part in parts:
        if len("_".join([*kept, part])) + tail > NAME_LENGTH:
            break
        kept.append(part)
    return "_".join([*kept, f"etc-{_hash('_'.join(parts[len(kept) - 1:]))}"])


def fixed_width_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Name settings (key -> value) with the bits their ``method`` runs at whatever ``bits`` says: none
    for the float method (``fp``, not ``fp_w2a2``), its own width for bnn (``bnn_w1a1``)."""
    method = settings.get("method")
    fixed = fixed_bits(method) if isinstance(method, str) else None
    if fixed is None:
        return dict(settings)
    named = {key: value for key, value in settings.items() if key not in BITS_KEYS}
    return named if fixed == FLOAT_BITS else {**named, "bits.w": fixed, "bits.a": fixed}


def run_folder_name(prefix: str, method: str | None, weight_bits: Any, act_bits: Any,
                    overrides: Sequence[str]) -> str:
    """A single run's folder name (``hydra.run.dir`` in ``conf/train.yaml``): ``prefix`` (its start
    time), the method, its bits (none for the float method) and the other settings the command line
    gives, e.g. ``12-00-00_lsq_w2a2_cifar10_resnet20_optim.lr-0.05``; the bits a method runs at
    whatever ``bits`` says are its own (``bnn_w1a1``). ``method`` is ``None`` where Hydra composes its
    own config alone (``--cfg hydra``): the name then holds what the command line gives."""
    settings: dict[str, Any] = {} if method is None else {"method": method, "bits.w": weight_bits, "bits.a": act_bits}
    given = name_settings(overrides)
    settings.update({key: value for key, value in given.items() if key not in ("method", *BITS_KEYS)})
    return bounded_name(prefix, name_parts(fixed_width_settings(settings)))


def log_epoch(writer: Any, metrics: Mapping[str, Any]) -> None:
    """Write one epoch's curves (:data:`EPOCH_TAGS`, and the method's ``quant/*`` scalars under
    :data:`QUANT_TAG_PREFIX`) at step ``metrics["epoch"]``."""
    step = metrics["epoch"]
    for key, value in metrics.items():
        if key in EPOCH_TAGS:
            writer.add_scalar(EPOCH_TAGS[key], value, step)
        elif key.startswith("quant/"):
            writer.add_scalar(QUANT_TAG_PREFIX + key.removeprefix("quant/"), value, step)
    writer.flush()


def log_step(writer: Any, step: int, loss: Tensor, lr: float, scalars: Mapping[str, float]) -> None:
    """``trainer.log_every_steps``: the last batch's loss, the learning rate and the method's scalars
    (``Method.scalars``: LSQ steps, PACT clip levels, ...) against the number of optimizer steps
    done, under :data:`STEP_TAG_PREFIX`. Costs a host sync per scalar."""
    writer.add_scalar(f"{STEP_TAG_PREFIX}loss", float(loss), step)
    writer.add_scalar(f"{STEP_TAG_PREFIX}lr", lr, step)
    for key, value in scalars.items():
        writer.add_scalar(f"{STEP_TAG_PREFIX}quant/{key}", value, step)


def log_costs(writer: Any, cost: Mapping[str, float]) -> None:
    """Write the run's costs once, as a text table (TensorBoard's Text dashboard, tag ``cost``)."""
    rows = [("GBOPs per image", f"{cost['bops'] / 1e9:.4f}"), ("GBit-MACs per image", f"{cost['bit_macs'] / 1e9:.4f}"),
            ("weight memory (MiB)", f"{cost['weight_memory_mb']:.4f}"),
            ("compression vs FP32", f"{cost['compression']:.2f}x")]
    writer.add_text("cost", "| cost | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows))


# HParams columns that take few values: discrete domains, so that TensorBoard spaces them evenly
# (bits 1-8 beside 32 on a linear axis would squeeze under it) and shows them as they are.
BITS_DOMAIN = list(BIT_WIDTHS)


def log_hparams(writer: Any, hparams: Mapping[str, Any], domains: Mapping[str, list[Any]]) -> None:
    """Write the run's HParams (settings ``hparams``, with ``domains`` for the discrete ones; a setting
    of ``domains`` absent from ``hparams`` is a column this run leaves blank) with
    :data:`HPARAM_METRICS` as metrics. Only the HParams records are written (``add_hparams`` would
    also write each metric as a lone scalar at step 0)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    metrics = {tag: 0.0 for tag in HPARAM_METRICS}
    # The experiment record declares every column with its domain, a setting this run leaves blank too
    # (it holds names and domains, no values); the session record holds this run's values.
    experiment, _, _ = hparams_summary({**{key: domain[0] for key, domain in domains.items()}, **hparams}, metrics,
                                       dict(domains))
    _, start, end = hparams_summary(dict(hparams), metrics,
                                    {key: domain for key, domain in domains.items() if key in hparams})
    for record in (experiment, start, end):
        writer.file_writer.add_summary(record)
    writer.flush()


def continue_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir``, quoted for a POSIX shell."""
    return f"qnnrun train resume={shlex.quote(str(run_dir))}"


def _only(folder: Path, names: set[str]) -> bool:
    """Whether ``folder`` is a folder holding no entry but ``names``."""
    try:
        return {entry.name for entry in folder.iterdir()} <= names
    except OSError:
        return False


def remove_if_disposable(run_dir: Path, keep: Path, disposable: frozenset[str] = RUN_FILES) -> bool:
    """Remove ``run_dir`` when it holds nothing but ``disposable``, what Hydra (and qnnrun's own
    bookkeeping) wrote before the run started (a sweep folder: :data:`SWEEP_FILES`), then its parents
    while they are empty, up to ``keep`` (not included): ``outputs/<date>/<time>`` of a mistyped
    command leaves no ``outputs/<date>/`` or empty ``outputs/``. Returns whether ``run_dir`` was
    removed; ``keep`` itself and the folders above it never are."""
    keep = keep.resolve()
    if keep.is_relative_to(run_dir.resolve()):  # run_dir is keep or a folder above it
        return False
    try:
        entries = {entry.name for entry in run_dir.iterdir()}
    except OSError:
        return False
    hydra = run_dir / HYDRA_SUBDIR
    if not entries <= disposable or (hydra.exists() and not _only(hydra, HYDRA_CONFIGS)):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.resolve().parent
    while keep in parent.parents:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
        parent = parent.parent
    return True


def identity_fields(config: Mapping[str, Any], quantizes: bool) -> dict[str, Any]:
    """What a run computes, flat: its resolved config without :data:`FREE_KEYS`; a run that quantizes
    nothing (``method=fp``, 32 bits) ignores ``bits`` and the quantizer options, so they are left
    out too (BatchNorm re-estimation, which the loop does, stays)."""
    flat = {key: value for key, value in _flatten(config).items() if not is_free(key)}
    if not quantizes:
        flat = {key: value for key, value in flat.items()
                if not (key.startswith(("bits.", "quant.")) and key != "quant.bn_reestimate_batches")}
    return flat


def run_identity(config: Mapping[str, Any], quantizes: bool) -> str:
    """A digest of :func:`identity_fields`. It changes with the config's form too (an option added to
    qnnrun, ``0`` written ``0.0``): :func:`qnnrun.sweep.kept_duplicate` compares by value instead."""
    flat = identity_fields(config, quantizes)
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim_run(sweep_dir: Path, identity: str, run_dir: Path) -> Path | None:
    """Claim the run ``identity`` for the job in ``run_dir``; returns ``None`` when this job trains
    it, or the folder of the job of the same sweep that claimed it first.

    The claim is a hard link to a file already written, so it appears whole or not at all and jobs
    launched at once agree on one claimant.
    """
    claims = sweep_dir / CLAIMS
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / identity
    with tempfile.NamedTemporaryFile("w", dir=claims, prefix=".", suffix=".tmp", delete=False) as file:
        file.write(f"{run_dir.resolve()}\n")
    try:
        os.link(file.name, path)  # fails when the claim exists: the file appears whole or not at all
    except FileExistsError:
        first = Path(path.read_text().strip())
        return None if first == run_dir.resolve() else first
    finally:
        os.unlink(file.name)
    return None


def note_failure(sweep_dir: Path, run_dir: Path, message: str) -> None:
    """Note in ``sweep_dir`` that the job in ``run_dir`` failed with ``message`` (one line)."""
    folder = sweep_dir / FAILURES
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / run_dir.name, f"{message}\n")


def noted_failures(sweep_dir: Path) -> dict[Path, str]:
    """Job folder -> error line of every job of ``sweep_dir`` that noted its failure."""
    notes = {}
    for note in sorted((sweep_dir / FAILURES).glob("*")):
        if not note.name.startswith("."):  # an atomic write's temporary file
            notes[(sweep_dir / note.name).resolve()] = note.read_text().strip()
    return notes


MULTIRUN_FLAGS = ("-m", "--multirun")


def asks_for_sweep(args: list[str]) -> bool:
    """Whether a command line's arguments ask Hydra for a sweep (``-m`` / ``--multirun``)."""
    return any(arg in MULTIRUN_FLAGS for arg in args)


def resume_single_run_args(args: list[str]) -> list[str]:
    """``args`` of ``qnnrun train``, plus what lets a single run's resume write into its own folder:
    for ``resume=PATH`` naming a checkpoint, ``hydra.run.dir=<the run's folder>`` (unless given); for a resume into a
    folder that holds Hydra's files already, ``hydra.output_subdir=null``, so that the run's own
    ``.hydra/`` (its config and overrides) is kept as the run wrote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if asks_for_sweep(args):
        return args
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except HydraException:
        return args  # Hydra reports the syntax error itself
    values = {o.key_or_group: o.value() for o in parsed if not o.is_sweep_override()}
    resume, run_dir = values.get("resume"), values.get("hydra.run.dir")
    extra = []
    try:  # resume=. in a folder without a checkpoint is refused from Hydra's own run folder, which the error removes
        folder = checkpoint_file(resume).parent if isinstance(resume, str) else None
    except QnnrunError:
        folder = None
    if folder is not None:
        if run_dir is None:
            run_dir = str(folder)
            quote = next((q for q in ("'", '"') if q not in run_dir), "")
            extra.append(f"hydra.run.dir={quote}{run_dir}{quote}")
    if resume not in (None, False) and run_dir is not None and (Path(str(run_dir)) / HYDRA_SUBDIR).is_dir():
        extra.append("hydra.output_subdir=null")
    return [*args, *extra]


def checkpoint_state(config: dict[str, Any], epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, method: Method, best_acc: float, history: list[dict[str, Any]],
                     info: DataInfo, extensions: list[dict[str, int]], folded_at_build: list[str],
                     teacher_sha256: str | None) -> dict[str, Any]:
    """A checkpoint after ``epoch`` completed epochs (see :mod:`qnnrun.checkpoint`)."""
    return {
        "format": FORMAT, "epoch": epoch, "config": config, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "method": method.state_dict(), "best_acc": best_acc, "history": history, "info": asdict(info),
        "extensions": extensions, "folded_at_build": folded_at_build, "teacher_sha256": teacher_sha256,
    }


# Discrete HParams domains of the settings that take few values (log_hparams).
HPARAM_DOMAINS = {"bits_w": BITS_DOMAIN, "bits_a": BITS_DOMAIN, "method": sorted(METHODS),
                  "first_layer": list(LAYER_POLICIES), "last_layer": list(LAYER_POLICIES),
                  "precision": list(PRECISIONS)}


def hparams_record(cfg: DictConfig, method: Method, info: DataInfo, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that tells runs apart, and the costs, as TensorBoard HParams columns."""
    distill = summary.get("distill")
    # A mixed run has no one width: blank bits_w/bits_a (its layer_bits says), never its unmatched layers'.
    widths = {} if summary["layer_bits"] else {"bits_w": method.weight_bits, "bits_a": method.act_bits}
    return {"method": cfg.method.name, **widths,
            "model": cfg.model.name, "dataset": info.name, "seed": cfg.seed, "epochs": cfg.trainer.epochs,
            "lr": float(cfg.optim.lr), "optimizer": str(cfg.optim.name),
            "first_layer": str(cfg.quant.first_layer), "last_layer": str(cfg.quant.last_layer),
            "init_from": short_run_name(cfg.init_from), "precision": str(cfg.trainer.precision),
            "distill": "none" if distill is None else short_run_name(distill["teacher"]), "gbops": summary["gbops"],
            "weight_mb": summary["weight_memory_mb"], "layer_bits": _layer_bits_text(summary["layer_bits"])}


def _distill_record(cfg: DictConfig, teacher_sha256: str | None) -> dict[str, Any] | None:
    """``trainer.distill`` as recorded in ``summary.json``: teacher (path and the file's SHA-256),
    weight, temperature; ``None`` when off."""
    distill = cfg.trainer.get("distill")
    if distill is None or distill.teacher is None:
        return None
    return {"teacher": str(distill.teacher), "teacher_sha256": teacher_sha256, "weight": float(distill.weight),
            "temperature": float(distill.temperature)}


def short_run_name(checkpoint: Any) -> str:
    """A checkpoint path (a ``.ckpt`` file or a run folder) as its run folder's name; ``none`` for none."""
    if not checkpoint:
        return "none"
    path = Path(str(checkpoint))
    return path.parent.name if path.suffix == ".ckpt" else path.name


def _layer_bits_text(layer_bits: Mapping[str, Mapping[str, int]] | None) -> str:
    """A mixed run's per-layer widths as one HParams value: ``conv1=W8A8;fc=W4A8``, or ``none``."""
    if not layer_bits:
        return "none"
    return ";".join(f"{pattern}=W{bits['w']}A{bits['a']}" for pattern, bits in layer_bits.items())


def summary_record(cfg: DictConfig, method: Method, info: DataInfo, history: list[dict[str, Any]],
                   best_acc: float, cost: Mapping[str, float], init_acc: float | None,
                   layer_bits: Mapping[str, Mapping[str, int]] | None = None,
                   teacher_sha256: str | None = None) -> dict[str, Any]:
    """``summary.json`` of a finished run (without the keys the caller adds: extensions, overrides,
    run_dir): its setting, final and best test accuracy (%), costs per image and timing. ``layer_bits``:
    a mixed-precision run's real width of every conv/linear layer (name -> {w, a}, forward order);
    ``teacher_sha256``: the distillation teacher file's SHA-256 (hex), recorded beside its path.

    The best is among evaluations of the whole quantized network (``"quantized"`` in the history,
    absent in runs saved before it: counted); null when there is none (``epochs=0`` of a progressive
    method from a float net)."""
    last = history[-1]
    trained = [h for h in history if "epoch_time_s" in h]
    train_time = sum(h["epoch_time_s"] for h in trained)
    best = max((h for h in history if "test_acc" in h and h.get("quantized", True)), key=lambda h: h["test_acc"],
               default=None)
    return {
        "status": "done",
        "method": cfg.method.name,
        "model": cfg.model.name,
        "dataset": info.name,
        "bits_w": method.weight_bits,
        "bits_a": method.act_bits,
        # A mixed run (quant.layer_bits): each layer's real widths; null when one width runs throughout.
        "layer_bits": dict(layer_bits) if method.mixed and layer_bits else None,
        "seed": cfg.seed,
        "epochs": cfg.trainer.epochs,
        "distill": _distill_record(cfg, teacher_sha256),
        "test_acc": last["test_acc"],
        "test_top5": last.get("test_top5"),
        "test_loss": last["test_loss"],
        "best_test_acc": None if best is None else max(best_acc, best["test_acc"]),
        "best_epoch": None if best is None else best["epoch"],
        "init_test_acc": init_acc,
        "train_loss": last.get("train_loss"),
        "train_acc": last.get("train_acc"),
        "gbops": cost["bops"] / 1e9,
        "gmacs": cost["macs"] / 1e9,
        "gbit_macs": cost["bit_macs"] / 1e9,
        "weight_memory_mb": cost["weight_memory_mb"],
        "compression": cost["compression"],
        "train_time_s": train_time,
        "compile_s": sum(h.get("compile_s", 0.0) for h in history),
        "images_per_s": (sum(h["images_per_s"] * h["epoch_time_s"] for h in trained) / train_time
                         if train_time else None),
    }


# What a training job returns to the sweeper, in the order of hydra.sweeper.direction.
OBJECTIVES = ("test_acc", "gbops")


def objectives(summary: Mapping[str, Any]) -> list[float]:
    """A run's objectives for the search, from its ``summary.json``: final test accuracy (%), to
    maximize, and GBOPs per image, to minimize (:data:`OBJECTIVES`)."""
    return [float(summary[key]) for key in OBJECTIVES]
