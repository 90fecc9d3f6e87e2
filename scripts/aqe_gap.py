"""AQE's train/evaluation gap: the network ``method=aqe`` trains against the one it evaluates.

AQE trains the mixture ``alpha * h(x) + (1 - alpha) * x`` in every quantized weight and layer input
and evaluates ``h(x)`` alone (docs/binary.md). This script rebuilds a saved aqe run and measures
top-1 accuracy (%) of four networks on its test set and on training batches: ``h`` alone (what
qnnrun reports), the mixture everywhere (what the optimizer saw), and the mixture in the weights
only or in the layer inputs only, at the alpha of the checkpoint's last epoch (or ``--alpha``).
Before each measurement the BatchNorm statistics are re-estimated with the network in that mode, on
one draw of training batches (shuffled and augmented as the run trained) that every network shares,
so that each network is judged at its own statistics. A gap on the training batches as large as on
the test set says the low evaluated accuracy is the mismatch between the two networks, not
overfitting.

    python scripts/aqe_gap.py RUN_OR_CKPT [RUN_OR_CKPT ...] [--data-dir DIR] [--batches 50] [--alpha A]

Prints one Markdown table row per network and checkpoint, with the epochs the checkpoint trained.
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from qnnrun import CONFIG_DIR
from qnnrun.errors import QnnrunError
from qnnrun.evaluate import evaluate, load_saved_run, reestimate_batchnorm, saved_run_data
from qnnrun.quant.quantizers import AsymptoticQuantizer

# Which quantizers train as the mixture in each measured network (the others evaluate as h).
NETWORKS = {"h alone (reported)": (), "mixture": ("weight_quant", "input_quant"),
            "mixture in weights only": ("weight_quant",), "mixture in inputs only": ("input_quant",)}


class AsTrained(nn.Module):
    """``model`` with the AQE quantizers whose names end in one of ``mixed`` kept in training mode
    (the mixture) whatever mode the caller sets; everything else follows the caller."""

    def __init__(self, model: nn.Module, mixed: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.quantizers = [(m, name.endswith(mixed)) for name, m in model.named_modules()
                           if isinstance(m, AsymptoticQuantizer)]

    def forward(self, x: Tensor) -> Tensor:
        for quantizer, mix in self.quantizers:
            quantizer.train(mix)
        return self.model(x)


def measure(checkpoint: str, data_dir: str, batches: int,
            alpha: float | None) -> tuple[int, list[tuple[str, float, float]]]:
    """The epochs the checkpoint trained, and (network, test %, training-batches %) for each of
    :data:`NETWORKS`, on the CPU: ``batches`` training batches (drawn once) re-estimate BatchNorm and
    are measured on; ``alpha`` None takes the alpha of the checkpoint's last trained epoch."""
    run = load_saved_run(checkpoint, torch.device("cpu"))
    if run.config.method.name != "aqe":
        raise SystemExit(f"{checkpoint}: method={run.config.method.name}, expected an aqe run")
    config = OmegaConf.load(CONFIG_DIR / "eval.yaml")  # `qnnrun eval`'s paths: its cache folder under data_dir
    config.paths.data_dir = data_dir
    data = saved_run_data(run, None, config.paths, torch.device("cpu"))
    if alpha is None:  # the alpha of the last epoch the checkpoint trained (a rising alpha's included)
        run.method.on_epoch_start(run.model, max(run.epoch - 1, 0), int(run.config.trainer.epochs))
    else:
        run.method.set_alpha(run.model, alpha)
    fixed = list(itertools.islice(iter(data.train), batches))  # one draw, the same for every network
    rows = []
    for name, mixed in NETWORKS.items():
        model = AsTrained(run.model, mixed)
        reestimate_batchnorm(model, fixed)
        rows.append((name, evaluate(model, data.test, run.info.num_classes).acc,
                     evaluate(model, fixed, run.info.num_classes).acc))
    return run.epoch, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="aqe run folders or .ckpt files")
    parser.add_argument("--data-dir", default=os.environ.get("QNNRUN_DATA", "data"),
                        help="paths.data_dir of the runs' data set (default: $QNNRUN_DATA, else ./data, as qnnrun)")
    parser.add_argument("--batches", type=int, default=50,
                        help="training batches to re-estimate BatchNorm on and to measure on (default 50)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="the mixture's alpha (default: that of the checkpoint's last trained epoch)")
    args = parser.parse_args()
    if args.batches < 1:
        parser.error(f"--batches {args.batches}: expected a whole number of at least 1")
    if args.alpha is not None and not 0 < args.alpha <= 1:
        parser.error(f"--alpha {args.alpha}: expected a number in (0, 1]")
    torch.set_num_threads(1)
    for index, checkpoint in enumerate(args.checkpoints):
        try:
            epoch, rows = measure(checkpoint, args.data_dir, args.batches, args.alpha)
        except QnnrunError as error:  # a missing or unreadable run, a data set not there: one line
            raise SystemExit(f"{checkpoint}: {error}") from None
        if index == 0:
            print("| checkpoint | epochs | network | test % | training batches % |\n|---|---:|---|---:|---:|")
        for name, test, train in rows:
            print(f"| {checkpoint} | {epoch} | {name} | {test:.2f} | {train:.2f} |")


if __name__ == "__main__":
    main()
