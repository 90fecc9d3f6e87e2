"""Shared fixtures: the real data sets from ../shared/data, unpacked once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# pytest-xdist runs one worker per usable core (pyproject's addopts): each worker's torch gets its
# share of those cores, not all of them (four threads on two cores would slow every worker down).
# Tests that start qnnrun in a subprocess set OMP_NUM_THREADS=1 for it themselves.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def _unpack(archive: Path, dest: Path) -> Path:
    if shutil.which("tar"):  # about 5x faster than tarfile on the 60,000-file CIFAR-10 tree
        subprocess.run(["tar", "xzf", str(archive), "-C", str(dest), "--no-same-owner"], check=True)
        return dest
    with tarfile.open(archive) as tar:
        # The "data" filter refuses links and paths outside dest; older Pythons lack it.
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``<repo>/../shared/data``, holding mnist.tar.gz and cifar10-jpg.tar.gz."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found: MNIST/CIFAR-10 tests need the shared data sets")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mnist_dir(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding MNIST/raw/*-ubyte (torchvision layout)."""
    return _unpack(shared_data_dir / "mnist.tar.gz", tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def cifar10_jpg_dir(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding cifar10-jpg/{train,test}/<class>/*.jpg."""
    return _unpack(shared_data_dir / "cifar10-jpg.tar.gz", tmp_path_factory.mktemp("cifar10"))
