"""Accuracy and time of BinaryNet on MNIST: one training of the ``bnn_mnist`` preset.

Runs the preset's training (binary 3x1024 MLP, 20 epochs; target >= 98% test accuracy) through
the engine, one seed, and writes the result (accuracy, train time, images/s, device, overrides)
to ``<out>/bench.json`` next to the run's own outputs. Extra Hydra overrides change the run, e.g.
to the paper's 3x4096 net with dropout:

    python scripts/bench_bnn_mnist.py --data ~/data                               # the preset itself
    python scripts/bench_bnn_mnist.py --data /tmp/d model.widths=[4096,4096,4096] \
        model.input_dropout=0.2 model.dropout=0.5 trainer.epochs=100

``--data`` is the folder holding ``MNIST/raw`` (``tar xzf ../shared/data/mnist.tar.gz -C DIR``).
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from qnnrun.build import select_device
from qnnrun.cli import CONFIG_DIR, quote_numeric_groups
from qnnrun.engine import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding MNIST/raw")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_bnn_mnist"), help="run folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of experiment=bnn_mnist")
    args = parser.parse_args()

    overrides = ["experiment=bnn_mnist", f"seed={args.seed}", *args.overrides]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=quote_numeric_groups(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.data_dir = str(args.data)
        cfg.paths.cache_dir = str(args.data / ".qnnrun-cache")
        del cfg.hydra
    summary = train(cfg, args.out)
    used = select_device(cfg.trainer.device)
    device = (torch.cuda.get_device_name(used) if used.type == "cuda"
              else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "overrides": overrides,
        "model_widths": list(OmegaConf.to_container(cfg.model)["widths"]),
        "epochs": cfg.trainer.epochs,
        "test_acc": summary["test_acc"],
        "best_test_acc": summary["best_test_acc"],
        "train_time_s": summary["train_time_s"],
        "images_per_s": summary["images_per_s"],
        "device": device,
        "torch": torch.__version__,
        "target_met": summary["test_acc"] >= 98.0,
    }
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| {result['device']} | widths {result['model_widths']} | {result['epochs']} epochs | "
          f"test {result['test_acc']:.2f}% (best {result['best_test_acc']:.2f}%) | "
          f"train {result['train_time_s']:.0f} s | {result['images_per_s']:.0f} img/s |")


if __name__ == "__main__":
    main()
