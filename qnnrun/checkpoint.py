"""Checkpoints: written atomically, read with ``weights_only=True`` (a checkpoint never runs code).

A checkpoint is a dict of tensors and plain Python values::

    {"format": 1, "epoch": int (epochs completed), "config": dict (the resolved run config),
     "model": state_dict, "optimizer": ..., "scheduler": ..., "method": ...,
     "best_acc": float, "history": [per-epoch metric dicts], "info": dict (the data set's shape),
     "extensions": [{"at_epoch", "epochs_before", "epochs"} for each extend=true resume],
     "folded_at_build": [BatchNorms folded before the optimizer was built (from a folded init_from,
                         quant.fold_bn); absent in checkpoints before 2026-12-07: none],
     "teacher_sha256": the trainer.distill.teacher file's SHA-256 when the run started (null without
                       a teacher; absent before 2026-12-07): a resume refuses a teacher that changed,
     "partial": dict (only in a checkpoint written mid-epoch: batches done, tallies, RNG state)}
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch

from qnnrun.errors import QnnrunError

FORMAT = 1
LAST_CKPT = "last.ckpt"  # a run folder's latest checkpoint, the one a resume and a run-folder path name
REQUIRED_KEYS = ("format", "epoch", "config", "model")
_UMASK = os.umask(0)
os.umask(_UMASK)


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` so that ``path`` is always either the old or the new file."""
    replace_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that ``path`` is always either the old or the new file."""
    replace_atomic(path, lambda f: f.write(text.encode()))


def check_output_file(path: str | Path, key: str, make_folder: bool = False) -> None:
    """Raise a one-line QnnrunError naming ``key`` unless ``path`` can be written as a regular file:
    absent or a regular file (a link to one too), in an existing folder (``make_folder=True``: or in one
    that can be created; nothing is left created). A special file (``/dev/null``, a FIFO) or a folder
    is refused: an atomic replace would put a regular file in its place; so is a path given as text
    that ends in a separator (``out/``: a folder, absent or not)."""
    if isinstance(path, str) and path.endswith(("/", os.sep)):
        raise QnnrunError(f"{key}={path} names a folder: give a file path")
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "a special file"
        raise QnnrunError(f"{key}={path} is {kind}, not a file qnnrun may replace: give a file path")
    if path.is_symlink() and not path.exists():
        raise QnnrunError(f"{key}={path} is a link to nothing: give a file path")
    if not path.parent.is_dir():
        if not make_folder or path.parent.exists():
            problem = "is not a folder" if path.parent.exists() else "does not exist"
            raise QnnrunError(f"{key}={path}: the folder {path.parent} {problem}")
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise QnnrunError(f"{key}={path}: {blocker} is not a folder; give a file path")
        check_output_folder(path.parent, key, keep=False)  # it can be made (and is, when the file is written)


def check_output_folder(path: str | Path, key: str, keep: bool = True) -> None:
    """Create the folder ``path`` (and its parents) now, or raise a one-line QnnrunError naming
    ``key``: a file or special file in the way, no permission, a file system that refuses folders.
    ``keep=False`` removes again the (empty) folders the check created: for a check before another
    program creates the folder (Hydra), so that a command stopped by a later check leaves nothing."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise QnnrunError(f"{key}={path} cannot be a folder: {blocker} is not a folder; choose another with "
                          f"{key}=DIR")
    created = [] if keep else [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise QnnrunError(f"{key}={path} cannot be written ({err.strerror or err}); choose another with "
                          f"{key}=DIR") from None
    finally:
        for folder in created:
            with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                folder.rmdir()


@contextlib.contextmanager
def new_folder(path: str | Path, key: str) -> Iterator[None]:
    """Create the folder ``path`` (and its parents) for the block to write into (a one-line
    QnnrunError naming ``key`` where it cannot be); when the block fails, the folders made here are
    removed again (where it left them empty), so a failed command leaves nothing behind."""
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        check_output_folder(path, key)
        yield
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def replace_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Create ``path`` by ``write``-ing to a temporary file in the same folder, flushing it to disk,
    and replacing ``path`` with one ``os.replace`` (atomic on POSIX and Windows).

    A failed write (disk full, folder not writable) removes the temporary file, keeps the old
    ``path`` and raises a one-line :class:`QnnrunError` naming the file.
    """
    path = Path(path)
    check_output_file(path, "the file")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        kept = f"; the previous {path.name} is kept" if path.exists() else ""
        raise QnnrunError(f"could not write {path}: {err.strerror or err} (disk full or folder not "
                          f"writable?){kept}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_file(path: str | Path, key: str | None = None) -> Path:
    """The checkpoint file ``path`` names: the file itself, or ``last.ckpt`` in a run folder; a
    one-line QnnrunError when there is none (an empty path too: it read as the working folder),
    which starts with ``key=path`` when ``key`` names the option that gave it (``init_from``)."""
    named = f"{key}={path}: " if key else ""
    if not str(path).strip():
        raise QnnrunError(f"{named}the checkpoint path is empty: give a .ckpt file or a run folder holding last.ckpt")
    folder = Path(path).is_dir()
    file = Path(path) / LAST_CKPT if folder else Path(path)
    if not file.is_file():
        looked = f"{str(path).rstrip('/')}/{LAST_CKPT}" if folder else path  # ./last.ckpt, not last.ckpt
        raise QnnrunError(f"{named}checkpoint not found: {looked} (give a .ckpt file or a run folder holding "
                          f"last.ckpt)")
    return file


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes, as hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_archive(path: Path, what: str) -> None:
    """Check every member of the zip archive ``path`` (what ``torch.save`` writes) against the CRC-32
    stored beside it, which ``torch.load`` does not: a bit flipped on disk or in a copy would load as
    silently changed weights. A damaged archive is a one-line QnnrunError starting with ``what``."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, NotImplementedError) as err:
        raise QnnrunError(f"{what} is unreadable (truncated or corrupt?): {str(err).splitlines()[0]}") from None
    if damaged is not None:
        raise QnnrunError(f"{what} is corrupt: its member {damaged} fails its CRC-32 check (changed on disk or in "
                          f"a copy since it was written); use another copy")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a qnnrun checkpoint; any problem is a one-line QnnrunError naming the file."""
    path = checkpoint_file(path)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is damaged or foreign
        raise QnnrunError(f"checkpoint {path} is unreadable: not a torch.save archive (truncated or corrupt?)")
    check_archive(path, f"checkpoint {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((line.strip() for line in str(err).splitlines()
                       if "GLOBAL" in line or "WeightsUnpickler" in line),
                      "it holds objects other than tensors and plain values")
        raise QnnrunError(f"checkpoint {path} was refused by the safe loader (weights_only=True), nothing in it "
                          f"was run: {reason}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise QnnrunError(f"checkpoint {path} is unreadable (truncated or corrupt?): {first_line}") from None
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED_KEYS):
        raise QnnrunError(f"{path} is not a qnnrun checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    if ckpt["format"] != FORMAT:
        raise QnnrunError(f"checkpoint {path} has format {ckpt['format']}, this qnnrun reads format {FORMAT}")
    return ckpt
