"""Bit-packed XNOR + popcount kernels: packing, the CPU and Triton GEMMs against the float matmul of
the same signs, and the packed linear layer against the fake-quantized layers of a trained BNN."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from hydra_utils import compose_config
from torch import Tensor

from qnnrun.build import build_quantized_model
from qnnrun.data import build_data, dataset_info
from qnnrun.errors import QnnrunError
from qnnrun.kernels import (
    BinaryLinear,
    binarize_linear_layers,
    pack_signs,
    packed_words,
    popcount64,
    unpack_signs,
    xnor_matmul,
    xnor_matmul_cpu,
)
from qnnrun.optim import build_optimizer
from qnnrun.quant import functional as Q
from qnnrun.quant.layers import ChannelState, QuantLinear, quant_layers
from qnnrun.quant.quantizers import LevelQuantizer

REPO = Path(__file__).resolve().parents[2]
SHAPES = [(1, 1, 1), (3, 4, 1), (5, 7, 63), (5, 7, 64), (5, 7, 65), (2, 9, 127), (17, 3, 128), (33, 40, 200),
          (1, 70, 1000)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _signs_with_zeros(*shape: int) -> Tensor:
    """Random floats with a few exact zeros and negative zeros (both pack as +1)."""
    x = torch.randn(*shape)
    x[torch.rand(*shape) < 0.05] = 0.0
    x[torch.rand(*shape) < 0.05] = -0.0
    return x


def _assert_same(out: Tensor, expected: Tensor, exact: bool) -> None:
    if exact:
        assert torch.equal(out, expected)
    else:
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def _float_reference(a: Tensor, b: Tensor) -> Tensor:
    """sign(a) @ sign(b).T with the project's sign (+1 at 0), as int32 (exact: |dot| <= K < 2^24)."""
    return (Q.binary_levels(a.double()) @ Q.binary_levels(b.double()).T).to(torch.int32)


# ---- packing ----------------------------------------------------------------------------------

def test_pack_signs_hand_values() -> None:
    # +1 -> 1, -1 -> 0, 0 and -0.0 -> 1 (sign(0) = +1): bits 1,0,1,1,1,0 = 1 + 4 + 8 + 16.
    x = torch.tensor([[1.0, -1.0, 0.0, -0.0, 2.0, -3.0]])
    assert pack_signs(x).tolist() == [[29]]
    # 65 signs: two words; bit 63 set makes the first word negative; element 64 is bit 0 of word 1.
    x = -torch.ones(65)
    x[63] = x[64] = 1.0
    assert pack_signs(x).tolist() == [-(2**63), 1]
    assert pack_signs(torch.ones(64)).tolist() == [-1]  # all 64 bits set
    assert pack_signs(torch.tensor([3, -2, 0])).tolist() == [5]  # integer input
    assert pack_signs(torch.tensor([float("nan"), 1.0])).tolist() == [2]  # NaN -> -1, as binary_levels
    x = torch.randn(70, 130)
    assert torch.equal(pack_signs(x.t()), pack_signs(x.t().contiguous()))  # strided input


@pytest.mark.parametrize("k", [1, 7, 63, 64, 65, 128, 200])
def test_pack_unpack_round_trip_and_zero_padding(k: int) -> None:
    x = _signs_with_zeros(2, 3, k)
    packed = pack_signs(x)
    assert packed.dtype == torch.int64 and packed.shape == (2, 3, packed_words(k))
    assert torch.equal(unpack_signs(packed, k), Q.binary_levels(x))
    # The padding bits past k are 0, i.e. unpack as -1.
    whole = unpack_signs(packed, packed_words(k) * 64)
    assert bool((whole[..., k:] == -1).all())


def test_popcount64_matches_python_bit_count() -> None:
    words = torch.cat([torch.tensor([0, -1, -(2**63), 2**63 - 1, 1, 0x5555555555555555]),
                       torch.randint(-(2**63), 2**63 - 1, (1000,), dtype=torch.int64)])
    expected = [bin(w & (2**64 - 1)).count("1") for w in words.tolist()]
    assert popcount64(words).tolist() == expected
    assert expected[:5] == [0, 64, 1, 63, 1]


# ---- CPU GEMM ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_xnor_matmul_eager_equals_float_sign_matmul(m: int, n: int, k: int) -> None:
    a, b = _signs_with_zeros(m, k), _signs_with_zeros(n, k)
    out = xnor_matmul(pack_signs(a), pack_signs(b), k, compile=False)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out, _float_reference(a, b))


def test_xnor_matmul_extremes_and_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    # Equal rows give +K, opposite rows -K; a tiny chunk bound forces one row per chunk.
    monkeypatch.setattr("qnnrun.kernels.binary._EAGER_CHUNK_WORDS", 1)
    a = _signs_with_zeros(6, 130)
    b = torch.cat([a[:2], -a[2:3] + (a[2:3] == 0).float() * -1.0])  # a0, a1, and the exact opposite of a2
    out = xnor_matmul(pack_signs(a), pack_signs(b), 130, compile=False)
    assert out[0, 0] == out[1, 1] == 130 and out[2, 2] == -130
    assert torch.equal(out, _float_reference(a, b))


@pytest.mark.slow  # the first torch.compile takes ~30 s with an empty inductor cache (~5 s warm)
def test_xnor_matmul_compiled_equals_float_sign_matmul(trained_bnn: tuple[torch.nn.Module, Tensor, Tensor]) -> None:
    # The default CPU path. One compiled kernel (dynamic shapes) serves every shape but a first 1-row
    # or 1-word operand, which compile once more.
    for m, n, k in SHAPES + [(64, 130, 1000)]:
        a, b = _signs_with_zeros(m, k), _signs_with_zeros(n, k)
        assert torch.equal(xnor_matmul_cpu(pack_signs(a), pack_signs(b), k, compile=True), _float_reference(a, b))
    model, images, _ = trained_bnn
    with torch.no_grad():
        assert torch.equal(binarize_linear_layers(model)(images), binarize_linear_layers(model, compile=False)(images))


def test_xnor_matmul_rejects_bad_operands() -> None:
    a, b = pack_signs(torch.randn(3, 100)), pack_signs(torch.randn(4, 100))
    with pytest.raises(QnnrunError, match=r"k=200 does not fit a with 2 words per row: valid k are 65\.\.128"):
        xnor_matmul(a, b, 200)
    with pytest.raises(QnnrunError, match="dtype torch.int32: expected torch.int64"):
        xnor_matmul(a.view(torch.int32), b, 100)
    with pytest.raises(QnnrunError, match=r"k='x' is not valid.*integer k >= 1"):
        xnor_matmul(a, b, "x")  # type: ignore[arg-type]
    with pytest.raises(QnnrunError, match=r"k=65 does not fit b with 1 words"):
        xnor_matmul(pack_signs(torch.randn(3, 65)), pack_signs(torch.randn(4, 64)), 65)
    with pytest.raises(QnnrunError, match="expected 2-d"):
        xnor_matmul(pack_signs(torch.randn(2, 3, 100)), b, 100)
    with pytest.raises(QnnrunError, match=r"shape \(2, 0\).*K >= 1"):
        pack_signs(torch.randn(2, 0))


# ---- Triton kernel ----------------------------------------------------------------------------

_TRITON_CHECK = textwrap.dedent("""
    import torch
    from qnnrun.kernels import pack_signs, xnor_matmul_cpu
    from qnnrun.kernels.binary_triton import INTERPRETING, pack_signs_triton, xnor_matmul_triton
    assert INTERPRETING
    torch.manual_seed(0)
    for shape in [(1,), (3, 63), (2, 5, 64), (40, 65), (17, 1000)]:
        x = torch.randn(*shape)
        x[torch.rand(*shape) < 0.05] = 0.0
        x[torch.rand(*shape) < 0.05] = -0.0
        x.view(-1)[0] = float("nan")  # NaN >= 0 is false: -1, as binary_levels has it
        assert torch.equal(pack_signs_triton(x), pack_signs(x)), shape
    strided = torch.randn(70, 130).t()
    assert torch.equal(pack_signs_triton(strided), pack_signs(strided))
    for m, n, k in {shapes}:
        a, b = torch.randn(m, k), torch.randn(n, k)
        a[torch.rand(m, k) < 0.05] = 0.0
        pa, pb = pack_signs(a), pack_signs(b)
        out = xnor_matmul_triton(pa, pb, k)
        assert out.dtype == torch.int32 and out.shape == (m, n), (out.dtype, out.shape)
        assert torch.equal(out, xnor_matmul_cpu(pa, pb, k, compile=False)), (m, n, k)
        reference = (torch.where(a >= 0, 1.0, -1.0) @ torch.where(b >= 0, 1.0, -1.0).T).to(torch.int32)
        assert torch.equal(out, reference), (m, n, k)
    print("triton-interpreter-ok", len({shapes}))
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernel_in_interpreter_equals_cpu_path() -> None:
    # A subprocess: TRITON_INTERPRET must be set before triton is imported and must not leak into
    # this process. Shapes cover one and several 32x32 programs, ragged edges and K = 1/63/64/65.
    shapes = [(1, 1, 1), (5, 7, 63), (33, 31, 64), (40, 70, 65), (3, 65, 300)]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _TRITON_CHECK.format(shapes=shapes)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"triton-interpreter-ok {len(shapes)}" in result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton kernel compiled for it)")
@pytest.mark.parametrize("hw_popcount", [True, False])
def test_triton_kernel_on_gpu_equals_cpu_path(hw_popcount: bool) -> None:
    from qnnrun.kernels.binary_triton import xnor_matmul_triton

    for m, n, k in SHAPES + [(300, 257, 4096)]:
        a, b = _signs_with_zeros(m, k), _signs_with_zeros(n, k)
        pa, pb = pack_signs(a).cuda(), pack_signs(b).cuda()
        assert torch.equal(pack_signs(a.cuda()).cpu(), pa.cpu())
        expected = _float_reference(a, b)
        assert torch.equal(xnor_matmul_triton(pa, pb, k, hw_popcount=hw_popcount).cpu(), expected)
        assert torch.equal(xnor_matmul(pa, pb, k).cpu(), expected)


# ---- the packed layer on a real BNN -----------------------------------------------------------

@pytest.fixture(scope="module")
def trained_bnn() -> tuple[torch.nn.Module, Tensor, Tensor]:
    """method=bnn model=mlp on digits after 40 real training steps (latent weights, BatchNorm
    statistics and the output BatchNorm all moved), the 360 normalized test images and labels."""
    torch.manual_seed(0)
    cfg = compose_config(["method=bnn", "optim=adam", "optim.lr=0.01"])
    data = build_data(cfg.dataset, data_dir=".", cache_dir=".", device="cpu", seed=0)
    model, method = build_quantized_model(cfg, dataset_info(cfg.dataset), torch.device("cpu"))
    optimizer = build_optimizer(cfg.optim, method.param_groups(model, cfg.optim.weight_decay))
    criterion = method.criterion(0.0)
    model.train()
    step = 0
    while step < 40:
        for images, labels in data.train:
            optimizer.zero_grad()
            criterion(model(images), labels).backward()
            optimizer.step()
            method.after_optimizer_step(model, step)
            step += 1
    test_images = torch.cat([images for images, _ in data.test])
    test_labels = torch.cat([labels for _, labels in data.test])
    return model.eval(), test_images, test_labels


def test_binarized_bnn_mlp_equals_the_fake_quantized_model(trained_bnn: tuple[torch.nn.Module, Tensor, Tensor]) -> None:
    model, images, labels = trained_bnn
    packed = binarize_linear_layers(model, compile=False)
    layers = [m for m in packed.modules() if isinstance(m, BinaryLinear)]
    assert [layer.binary_input for layer in layers] == [False, True, True]  # float image input, then A1
    assert not any(isinstance(m, QuantLinear) for m in packed.modules())
    assert model.training is False and any(isinstance(m, QuantLinear) for m in model.modules())  # untouched
    with torch.no_grad():
        expected, out = model(images), packed(images)
    assert torch.equal(out.argmax(1), expected.argmax(1))
    # Integer dot products are exact; the classifier's bias add and the BatchNorms see the same floats.
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert (expected.argmax(1) == labels).float().mean() > 0.5  # a model that learned, not a random one


def test_binary_linear_layers_equal_their_quant_linear_exactly(
        trained_bnn: tuple[torch.nn.Module, Tensor, Tensor]) -> None:
    model, images, _ = trained_bnn
    inputs: dict[str, Tensor] = {}
    hooks = [layer.register_forward_hook(lambda mod, args, out, name=name: inputs.__setitem__(name, args[0]))
             for name, layer in quant_layers(model)]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    for name, layer in quant_layers(model):
        x = inputs[name]
        binary = BinaryLinear.from_quant(layer, name, compile=False)
        exact = layer.bias is None  # a bias add may round differently inside a BLAS addmm
        with torch.no_grad():
            _assert_same(binary(x), layer(x), exact)
            # Exact zeros in the input are +1 to the packed layer and to the sign quantizer alike.
            x_zeros = x.clone()
            x_zeros[::3, ::5] = 0.0
            _assert_same(binary(x_zeros), layer(x_zeros), exact)
            _assert_same(binary(x_zeros[:1].reshape(1, 1, -1)), layer(x_zeros[:1]).reshape(1, 1, -1), exact)
        assert binary.weight_packed.shape == (layer.out_features, packed_words(layer.in_features))
        assert binary.weight_packed.numel() * 8 * 32 == layer.weight.numel() * 4  # 32x smaller (K multiple of 64)
        assert torch.equal(binary.weight_signs(), Q.binary_levels(layer.weight.detach()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton kernels compiled for it)")
def test_binarized_bnn_mlp_on_gpu_equals_the_fake_quantized_model(
        trained_bnn: tuple[torch.nn.Module, Tensor, Tensor]) -> None:
    model, images, _ = trained_bnn
    model = copy.deepcopy(model).cuda()
    images = images.cuda()
    with torch.no_grad():
        expected, out = model(images), binarize_linear_layers(model)(images)
    assert out.is_cuda and torch.equal(out.argmax(1), expected.argmax(1))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_binary_linear_with_per_row_scale_from_ste_weights() -> None:
    # method=ste at W1 (A32): weights sign(w) * mean|w| per output row, float inputs.
    cfg = compose_config(["method=ste", "bits.w=1", "bits.a=32", "quant.first_layer=same", "quant.last_layer=same"])
    model, _ = build_quantized_model(cfg, dataset_info(cfg.dataset), torch.device("cpu"))
    model.eval()
    images = torch.randn(20, 1, 8, 8)
    packed = binarize_linear_layers(model, compile=False)
    assert any(bool((m.scale != 1).any()) for m in packed.modules() if isinstance(m, BinaryLinear))
    with torch.no_grad():
        assert torch.equal(packed(images), model(images))


def test_binarize_rejects_layers_that_cannot_be_packed() -> None:
    cfg = compose_config(["method=qnn", "bits.w=1", "bits.a=2"])
    model, _ = build_quantized_model(cfg, dataset_info(cfg.dataset), torch.device("cpu"))
    with pytest.raises(QnnrunError, match=r"layer features\.4: input quantizer LevelQuantizer\(kind=linear, bits=2\) "
                                          r"cannot run packed: valid are sign levels"):
        binarize_linear_layers(model)
    cfg = compose_config(["method=qnn", "bits=2"])
    model, _ = build_quantized_model(cfg, dataset_info(cfg.dataset), torch.device("cpu"))
    with pytest.raises(QnnrunError, match="no QuantLinear with 1-bit weights"):
        binarize_linear_layers(model)
    layer = QuantLinear(8, 3, weight_quant=LevelQuantizer("sign", 1))
    layer.set_channel_state(ChannelState.FLOAT, torch.tensor([1]))  # one float row: not +-s
    with pytest.raises(QnnrunError, match="layer model: its quantized weight is not \\+-s per row"):
        binarize_linear_layers(layer)


@pytest.mark.slow  # ~1-2 s per configuration of ptxas work
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_gemm_configs_compile_for_sm90_without_spills() -> None:
    # No GPU needed: Triton compiles ahead of time for a target, and its bundled ptxas reports the
    # registers. This covers the libdevice popc branch the interpreter cannot run.
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qnnrun.kernels.binary_triton import _CONFIGS, _xnor_gemm_kernel

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip(f"no ptxas at {ptxas}")
    names = ["a_ptr", "b_ptr", "c_ptr", "M", "N", "W", "K", "stride_aw", "stride_bw", "stride_cm",
             "BLOCK_M", "BLOCK_N", "UNROLL", "HW_POPCOUNT"]
    signature = {name: "*i32" if name.endswith("_ptr") else "i32" for name in names[:10]}
    signature.update({name: "constexpr" for name in names[10:]})
    for config in _CONFIGS:
        constants = {(names.index(key),): value for key, value in {**config.kwargs, "HW_POPCOUNT": True}.items()}
        source = ASTSource(fn=_xnor_gemm_kernel, signature=signature, constexprs=constants)
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": config.num_warps, "num_stages": config.num_stages})
        assert "popc.b32" in kernel.asm["ptx"]
        with tempfile.TemporaryDirectory() as tmp:
            ptx = Path(tmp) / "kernel.ptx"
            ptx.write_text(kernel.asm["ptx"])
            command = [str(ptxas), "-v", "--gpu-name", "sm_90a", str(ptx), "-o", str(ptx.with_suffix(".cubin"))]
            report = subprocess.run(command, capture_output=True, text=True, check=True).stderr
        assert " 0 bytes spill stores" in report, (config, report)
