"""Compose qnnrun configs and run the ``qnnrun`` command in tests the way a user does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from qnnrun import cli
from qnnrun.cli import CONFIG_DIR, quote_numeric_groups


def compose_config(overrides: list[str], config_name: str = "train", data_dir: Path | None = None,
                   keep_hydra: bool = False) -> DictConfig:
    """The composed config of ``qnnrun <config_name> <overrides>``, with Hydra's runtime values set;
    ``keep_hydra`` keeps the ``hydra`` node (launcher, sweeper params)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=quote_numeric_groups(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
            cfg.paths.cache_dir = str(data_dir / ".cache")
        if "trainer" in cfg:
            cfg.trainer.progress = False
        if not keep_hydra:
            del cfg.hydra
    return cfg


def run_cli(args: list[str], cwd: Path, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """``qnnrun ARGS`` in this process from ``cwd``; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("QNNRUN_DATA", str(cwd / "data"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["qnnrun", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


class Interrupt(Exception):
    """Raised inside a run to simulate an interruption after some epochs."""


def train_interrupted_then_resumed(tmp_path: Path, overrides: list[str], method_cls: type, stop_epoch: int,
                                   monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict, int]:
    """Summaries of one uninterrupted run (``tmp_path/straight``) and of the same run stopped at the
    start of epoch ``stop_epoch`` (0-based) and resumed with ``resume=true`` (``tmp_path/interrupted``),
    and the epoch its checkpoint held when it was stopped."""
    from qnnrun.checkpoint import load_checkpoint
    from qnnrun.engine import train

    def run(name: str, extra: list[str]) -> dict:
        return train(compose_config([*overrides, *extra], data_dir=tmp_path / "data"), tmp_path / name)

    straight = run("straight", [])
    original = method_cls.on_epoch_start

    def stop(self, model, epoch: int, epochs: int) -> None:
        if epoch == stop_epoch:
            raise Interrupt
        original(self, model, epoch, epochs)

    with monkeypatch.context() as patch:
        patch.setattr(method_cls, "on_epoch_start", stop)
        with pytest.raises(Interrupt):
            run("interrupted", [])
    stopped_at = load_checkpoint(tmp_path / "interrupted")["epoch"]
    return straight, run("interrupted", ["resume=true"]), stopped_at
