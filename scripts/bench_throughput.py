"""Training throughput of float vs quantized training, side by side in one process.

Measures the engine's own ``train_step`` (method hooks, forward, loss, backward, optimizer) on
random CIFAR-shaped batches held on the device, so the number is the pure train-step speed
without data loading. Prints a Markdown table: images/s, ratio to float, peak GPU memory.

    python scripts/bench_throughput.py                        # resnet20, fp vs ste W4A4 / W2A2
    python scripts/bench_throughput.py --batch 512 --steps 200 --device cuda
    python scripts/bench_throughput.py --runs method=fp method=ste,bits=2 --model resnet56
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import torch
from hydra import compose, initialize_config_dir

from qnnrun.cli import CONFIG_DIR, quote_numeric_groups
from qnnrun.data import dataset_info
from qnnrun.engine import build_optimizer, build_quantized_model, select_device, train_step

DEFAULT_RUNS = ["method=fp", "method=ste,bits=4", "method=ste,bits=2"]


def measure(overrides: list[str], device: torch.device, batch: int, steps: int, warmup: int,
            compile_model: bool) -> dict[str, float]:
    """Images/s and peak memory of ``steps`` train steps of the run described by ``overrides``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=quote_numeric_groups(overrides))
    info = dataset_info(cfg.dataset)
    torch.manual_seed(0)
    model, method = build_quantized_model(cfg, info, device)
    images = torch.randn(batch, info.in_channels, info.image_size, info.image_size, device=device)
    labels = torch.randint(0, info.num_classes, (batch,), device=device)
    method.prepare(model, [images])
    model.train()
    optimizer = build_optimizer(cfg.optim, method.param_groups(model, cfg.optim.weight_decay))
    criterion = method.criterion(0.0)
    forward = torch.compile(model) if compile_model else model

    def run(count: int, first: int) -> None:
        for step in range(first, first + count):
            train_step(model, forward, method, optimizer, criterion, images, labels, step)

    start = time.perf_counter()
    run(warmup, 0)
    sync(device)
    warm_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run(steps, warmup)
    sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"images_per_s": steps * batch / elapsed, "peak_mib": peak, "warmup_s": warm_s,
            "bits": f"W{method.weight_bits}/A{method.act_bits}"}


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="cifar10", help="only its input shape and class count are used")
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS,
                        help="one comma-separated override list per run; the first is the reference")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up reported apart)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{cpu_name()}, {torch.get_num_threads()} threads")
    print(f"{args.model} on {args.dataset}-shaped input, batch {args.batch}, {args.steps} steps after "
          f"{args.warmup} warm-up; {device.type}: {name}; torch {torch.__version__}; {date.today()}"
          f"{'; torch.compile' if args.compile else ''}\n")
    print("| run | bits | images/s | ratio to first | peak MiB | warm-up s |")
    print("|---|---|---:|---:|---:|---:|")
    reference = None
    for run in args.runs:
        overrides = [f"model={args.model}", f"dataset={args.dataset}", *run.split(",")]
        result = measure(overrides, device, args.batch, args.steps, args.warmup, args.compile)
        reference = reference or result["images_per_s"]
        print(f"| {run} | {result['bits']} | {result['images_per_s']:.0f} | "
              f"{result['images_per_s'] / reference:.2f} | {result['peak_mib']:.0f} | {result['warmup_s']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
