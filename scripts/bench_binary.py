"""Speed of the bit-packed XNOR + popcount kernels against float and unpacked binary GEMMs.

Prints Markdown tables:

1. square GEMMs ``[S, S] x [S, S]^T`` for each ``--sizes`` S: the packed XNOR GEMM (CPU:
   ``torch.compile``d torch ops, and their eager form up to ``--eager-max``; CUDA: the Triton
   kernel with the hardware popcount and with the SWAR popcount), against the float GEMM
   (MKL / cuBLAS fp32, TF32 off; cuBLAS bf16 on CUDA), the int8 tensor-core GEMM of the +-1 values
   (``torch._int_mm``, CUDA) and a straightforward unpacked XNOR (one byte per sign, ``==`` and
   count, up to ``--naive-max``); the cost of packing one [S, S] float operand; packed vs float
   operand memory. Every packed result is checked to equal the float matmul of the same signs.
2. the binary MNIST MLP of ``experiment=bnn_mnist`` (``model=mlp``, ``--width`` wide, random
   latent weights, evaluation mode) on a batch of ``--batch`` random images: the fake-quantized
   model (float matmuls of +-1 values, fp32; bf16 autocast on CUDA) against the packed model of
   :func:`qnnrun.kernels.binarize_linear_layers`; weight memory packed vs float.

Times are medians over ``--repeats`` after ``--warmup`` calls (Triton autotuning happens in the
warm-up; the eager and unpacked baselines get at most 3 calls after 1); CUDA times come from CUDA
events around each call.

    python scripts/bench_binary.py                                     # CPU: S = 256..2048, width 4096
    python scripts/bench_binary.py --device cuda --sizes 1024 2048 4096 8192 --batch 10000
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from hydra import compose, initialize_config_dir

from qnnrun.cli import CONFIG_DIR, quote_numeric_groups
from qnnrun.data import dataset_info
from qnnrun.build import build_quantized_model
from qnnrun.kernels import BinaryLinear, binarize_linear_layers, pack_signs, xnor_matmul, xnor_matmul_cpu
from qnnrun.quant.layers import QuantLinear

Timer = Callable[[Callable[[], object]], float]


def make_timer(device: torch.device, warmup: int, repeats: int) -> Timer:
    """A function returning the median milliseconds of ``fn()`` on ``device``."""
    def cpu_time(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def cuda_time(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    return cuda_time if device.type == "cuda" else cpu_time


def unpacked_xnor(a_bits: torch.Tensor, b_bits: torch.Tensor, chunk_bytes: int = 1 << 28) -> torch.Tensor:
    """The straightforward unpacked XNOR GEMM: bool signs [M, K], [N, K], one byte each ->
    ``2 * count(a == b) - K`` int32 [M, N], in row chunks of at most ``chunk_bytes`` intermediate."""
    m, k = a_bits.shape
    n = b_bits.shape[0]
    chunk = max(1, chunk_bytes // (n * k))
    out = torch.empty(m, n, dtype=torch.int32, device=a_bits.device)
    for start in range(0, m, chunk):
        equal = (a_bits[start:start + chunk, None, :] == b_bits[None]).sum(-1, dtype=torch.int32)
        out[start:start + chunk] = 2 * equal - k
    return out


def cpu_name() -> str:
    """The CPU model (``model name`` of /proc/cpuinfo, as lscpu shows it), else the platform's word."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt(ms: float | None) -> str:
    return "-" if ms is None else (f"{ms:.3f}" if ms < 1 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}")


def gemm_rows(sizes: list[int], device: torch.device, timer: Timer, slow_timer: Timer, eager_max: int,
              naive_max: int) -> list[str]:
    """One Markdown row per size: times in ms, packed-XNOR speedups, memory, exactness. The eager
    and unpacked baselines (up to seconds a call) are timed by ``slow_timer`` (fewer calls)."""
    cuda = device.type == "cuda"
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        a_sign, b_sign = torch.where(a >= 0, 1.0, -1.0), torch.where(b >= 0, 1.0, -1.0)
        pa, pb = pack_signs(a), pack_signs(b)
        times: dict[str, float | None] = {}
        if cuda:
            from qnnrun.kernels.binary_triton import xnor_matmul_triton

            packed = xnor_matmul(pa, pb, size)
            times["xnor"] = timer(lambda: xnor_matmul(pa, pb, size))
            times["xnor_swar"] = timer(lambda: xnor_matmul_triton(pa, pb, size, hw_popcount=False))
            a16, b16 = a.bfloat16(), b.bfloat16()
            times["bf16"] = timer(lambda: a16 @ b16.T)
            a8, b8 = a_sign.to(torch.int8), b_sign.to(torch.int8)
            # _int_mm needs more than 16 rows and sizes that are multiples of 8.
            times["int8"] = timer(lambda: torch._int_mm(a8, b8.T)) if size > 16 and size % 8 == 0 else None
        else:
            packed = xnor_matmul_cpu(pa, pb, size, compile=True)
            times["xnor"] = timer(lambda: xnor_matmul_cpu(pa, pb, size, compile=True))
            times["xnor_eager"] = slow_timer(lambda: xnor_matmul_cpu(pa, pb, size, compile=False)) \
                if size <= eager_max else None
        reference = (a_sign @ b_sign.T).to(torch.int32)  # exact: integers below 2^24
        exact = bool(torch.equal(packed, reference))
        times["fp32"] = timer(lambda: a @ b.T)
        a_bits, b_bits = a >= 0, b >= 0
        times["naive"] = slow_timer(lambda: unpacked_xnor(a_bits, b_bits)) if size <= naive_max else None
        times["pack"] = timer(lambda: pack_signs(a))
        xnor = times["xnor"]
        speedup = {key: (None if t is None else t / xnor) for key, t in times.items()}
        float_mib, packed_mib = a.numel() * 4 / 2**20, pa.numel() * 8 / 2**20
        if cuda:
            cells = [times["xnor"], times["xnor_swar"], times["fp32"], times["bf16"], times["int8"], times["naive"],
                     times["pack"]]
            ratios = [speedup["fp32"], speedup["bf16"], speedup["int8"], speedup["naive"]]
        else:
            cells = [times["xnor"], times["xnor_eager"], times["fp32"], times["naive"], times["pack"]]
            ratios = [speedup["fp32"], speedup["naive"]]
        gops = 2 * size**3 / (xnor * 1e-3) / 1e9
        rows.append(f"| {size} | " + " | ".join(fmt(t) for t in cells) + " | "
                    + " | ".join("-" if r is None else f"{r:.2f}x" for r in ratios)
                    + f" | {gops:.0f} | {float_mib:.1f} / {packed_mib:.2f} | {'yes' if exact else 'NO'} |")
    return rows


def mlp_table(device: torch.device, timer: Timer, width: int, batch: int) -> list[str]:
    """The binary MNIST MLP end to end: fake-quantized vs packed; weight memory."""
    overrides = ["experiment=bnn_mnist", f"model.widths=[{width},{width},{width}]", f"trainer.device={device.type}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=quote_numeric_groups(overrides))
    info = dataset_info(cfg.dataset)
    torch.manual_seed(0)
    model, _ = build_quantized_model(cfg, info, device)
    model.eval()
    packed = binarize_linear_layers(model)
    images = torch.randn(batch, info.in_channels, info.image_size, info.image_size, device=device)
    with torch.no_grad():
        agree = float((model(images).argmax(1) == packed(images).argmax(1)).float().mean())
        results = {"fake-quant fp32": timer(lambda: model(images)), "packed XNOR": timer(lambda: packed(images))}
        if device.type == "cuda":
            def bf16() -> torch.Tensor:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return model(images)
            results["fake-quant bf16 autocast"] = timer(bf16)
    float_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, QuantLinear))
    packed_bytes = sum(m.weight_packed.numel() * 8 for m in packed.modules() if isinstance(m, BinaryLinear))
    base = results["packed XNOR"]
    lines = [f"MLP 784-{width}-{width}-{width}-10 (bnn, W1A1, first layer float input), batch {batch}; "
             f"argmax agreement packed vs fake-quant: {agree:.4f}; linear weights {float_bytes / 2**20:.1f} MiB float "
             f"vs {packed_bytes / 2**20:.2f} MiB packed ({float_bytes / packed_bytes:.1f}x smaller)", "",
             "| model | ms / batch | images / s | time vs packed |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {fmt(ms)} | {batch / (ms * 1e-3):.0f} | {ms / base:.2f}x |" for name, ms in results.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="GEMM sizes S (default: 256 512 1024 2048 on CPU, 1024 2048 4096 8192 on CUDA)")
    parser.add_argument("--width", type=int, default=4096,
                        help="hidden width of the MLP (the paper's MNIST net: 4096; the bnn_mnist preset: 1024)")
    parser.add_argument("--batch", type=int, default=None, help="MLP batch (default: 1000 CPU, 10000 CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default: 5 CPU, 50 CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 1 CPU, 10 CUDA)")
    parser.add_argument("--eager-max", type=int, default=1024, help="largest S for the eager CPU XNOR")
    parser.add_argument("--naive-max", type=int, default=None,
                        help="largest S for the unpacked byte-per-sign XNOR (default: 1024 CPU, 8192 CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-mlp", action="store_true", help="GEMMs only")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch; valid here is --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    device = torch.device(args.device)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (TF32 would be a third precision)
    sizes = args.sizes or ([1024, 2048, 4096, 8192] if cuda else [256, 512, 1024, 2048])
    if any(s < 1 for s in sizes):
        parser.error(f"--sizes {sizes}: every size must be >= 1")
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    repeats = args.repeats or (50 if cuda else 5)
    timer = make_timer(device, warmup, repeats)
    slow_timer = make_timer(device, min(warmup, 1), min(repeats, 3))
    naive_max = args.naive_max if args.naive_max is not None else (8192 if cuda else 1024)

    name = torch.cuda.get_device_name(device) if cuda else f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"# bench_binary: {name}, torch {torch.__version__}, "
          f"{datetime.now(timezone.utc).isoformat(timespec='minutes')}\n")
    if cuda:
        header = ("| S | XNOR Triton popc ms | XNOR Triton SWAR ms | cuBLAS fp32 ms | cuBLAS bf16 ms "
                  "| int8 +-1 _int_mm ms | unpacked XNOR ms | pack [S,S] ms | vs fp32 | vs bf16 | vs int8 "
                  "| vs unpacked | XNOR Gbitop/s | operand MiB float / packed | exact |")
    else:
        header = ("| S | XNOR compiled ms | XNOR eager ms | fp32 matmul ms | unpacked XNOR ms | pack [S,S] ms "
                  "| vs fp32 | vs unpacked | XNOR Gbitop/s | operand MiB float / packed | exact |")
    print(header)
    print("|" + "---:|" * (header.count("|") - 2) + "---|")
    for row in gemm_rows(sizes, device, timer, slow_timer, args.eager_max, naive_max):
        print(row, flush=True)
    print("\n`vs X` = time of X / time of the packed XNOR GEMM (> 1: XNOR faster). "
          "Gbitop/s counts 2 S^3 binary operations (S^3 multiply-adds) per GEMM.\n")
    if not args.no_mlp:
        print("\n".join(mlp_table(device, timer, args.width, args.batch or (10000 if cuda else 1000))))


if __name__ == "__main__":
    main()
