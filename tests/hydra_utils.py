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


def compose_config(overrides: list[str], config_name: str = "train", data_dir: Path | None = None) -> DictConfig:
    """The composed config of ``qnnrun <config_name> <overrides>``, with Hydra's runtime values set."""
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
        del cfg.hydra
    return cfg


def run_cli(args: list[str], cwd: Path, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """``qnnrun ARGS`` in this process from ``cwd``; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("QNNRUN_DATA", str(cwd / "data"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["qnnrun", *args])
    monkeypatch.setattr(cli, "_failures", [])
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
