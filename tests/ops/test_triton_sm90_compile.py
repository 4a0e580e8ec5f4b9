"""Every Triton kernel of kernels/ compiled for sm_90 (H200) by ptxas, without a GPU, as the op wrappers launch it.

The interpreter (how CI runs the kernels) accepts code that the compiler rejects, and shows no register spills
or shared-memory overflow. Each case runs a wrapper's forward and backward in compile_for_sm90()
(tests/triton_sm90.py): the GPU benchmark shapes and dtypes of bench/bench_*.py, then test-sized shapes for the
masked tails and the other constexpr branches. A compile error, more shared memory than an sm_90 block has,
or a spill beyond SPILL_ALLOWANCE (per Triton release) fails; registers and spills of every kernel and config are
printed. CI runs it with two releases: its own venv's and PyTorch 2.11's Triton 3.6 (a GPU session's), which
refuses fp32 dots narrower than 16 where 3.9 accepts 8.
"""
from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

from allow_tf32 import set_allow_tf32
from triton_sm90 import SM90_SHARED_BYTES, compile_for_sm90, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

F32, BF16, F64 = torch.float32, torch.bfloat16, torch.float64


def _empty(*shape, dtype=F32):
    """A tensor "on the GPU" (compile_for_sm90): a compile reads its dtype and alignment, never its values."""
    return torch.empty(*shape, device="cuda", dtype=dtype)


def _class_avg_pool(batch, channels, size, classes, dtype=F32):
    from fastseg.kernels import class_avg_pool

    labels = _empty(batch, size, size, dtype=torch.int64)
    centers, counts = class_avg_pool.forward(_empty(batch, channels, size, size, dtype=dtype), labels, classes)
    class_avg_pool.backward(centers, labels, counts)


def _deform_conv2d(batch, channels, size, out_channels, kernel, stride, padding, groups, offset_groups, mask,
                   dtype=F32, tf32=False):
    from fastseg.kernels import deform_conv2d

    taps = kernel * kernel
    out_size = (size + 2 * padding - kernel) // stride + 1
    input = _empty(batch, channels, size, size, dtype=dtype)
    offset = _empty(batch, 2 * offset_groups * taps, out_size, out_size, dtype=dtype)
    modulation = _empty(batch, offset_groups * taps, out_size, out_size, dtype=dtype) if mask else None
    weight = _empty(out_channels, channels // groups, kernel, kernel, dtype=dtype)
    geometry = ((stride, stride), (padding, padding), (1, 1))
    with set_allow_tf32(tf32):
        output = deform_conv2d.forward(input, offset, weight, modulation, _empty(out_channels, dtype=dtype), *geometry)
        deform_conv2d.backward(output, input, offset, weight, modulation, *geometry)


def _flow_warp(batch, channels, in_size, out_size, dtype=F32, padding_mode="border", align_corners=True):
    from fastseg.kernels import flow_warp

    input = _empty(batch, channels, in_size, in_size, dtype=dtype)
    flow = _empty(batch, 2, out_size, out_size)
    output = flow_warp.forward(input, flow, padding_mode, align_corners)
    flow_warp.backward(output, input, flow, padding_mode, align_corners)


def _gaussian_center_distance(batch, channels, size, classes, dtype=F32):
    from fastseg.kernels import gaussian_center_distance

    embeddings = _empty(batch, channels, size, size, dtype=dtype)
    centers, margins = _empty(batch, classes, channels, dtype=dtype), _empty(batch, classes, dtype=dtype)
    phi = gaussian_center_distance.forward(embeddings, centers, margins, 10.0)
    gaussian_center_distance.backward(phi, embeddings, centers, margins, 10.0)


def _lovasz_hinge(rows, pixels, valid=True, dtype=F32):
    from fastseg.kernels import lovasz_hinge

    labels = _empty(rows, pixels, dtype=torch.bool)
    loss, weights = lovasz_hinge.forward(_empty(rows, pixels, dtype=dtype), labels,
                                         _empty(rows, pixels, dtype=torch.bool) if valid else None)
    lovasz_hinge.backward(loss, weights)


def _soft_class_pool(batch, channels, size, classes, dtype=F32):
    from fastseg.kernels import soft_class_pool

    features, probs = _empty(batch, channels, size, size, dtype=dtype), _empty(batch, classes, size, size, dtype=dtype)
    centers, mass = soft_class_pool.pool(features, probs)
    soft_class_pool.backward(centers, None, features, probs, centers, mass)
    attended, centers, mass = soft_class_pool.attend(features, probs)
    soft_class_pool.backward(None, attended, features, probs, centers, mass)


CASES = {
    # GPU benchmark shapes and dtypes (bench/bench_*.py with ON_GPU: batch 8)
    "class_avg_pool cityscapes-C512": (_class_avg_pool, (8, 512, 97, 19)),
    "class_avg_pool cityscapes-C32": (_class_avg_pool, (8, 32, 97, 19)),
    "class_avg_pool ade20k-C512": (_class_avg_pool, (8, 512, 64, 150)),
    "deform_conv2d csfrnet-C512 fp32": (_deform_conv2d, (8, 512, 97, 512, 3, 1, 1, 1, 1, True)),
    "deform_conv2d csfrnet-C512 bf16": (_deform_conv2d, (8, 512, 97, 512, 3, 1, 1, 1, 1, True, BF16)),
    "deform_conv2d csfrnet-C32 fp32": (_deform_conv2d, (8, 32, 97, 32, 3, 1, 1, 1, 1, True)),
    "deform_conv2d csfrnet-C32 bf16": (_deform_conv2d, (8, 32, 97, 32, 3, 1, 1, 1, 1, True, BF16)),
    "flow_warp decouple-104 fp32": (_flow_warp, (8, 256, 104, 104)),
    "flow_warp decouple-104 bf16": (_flow_warp, (8, 256, 104, 104, BF16)),
    "flow_warp decouple-208 fp32": (_flow_warp, (8, 256, 208, 208)),
    "flow_warp sfnet-52to104 bf16": (_flow_warp, (8, 256, 52, 104, BF16)),
    "gaussian_center_distance cityscapes-C32": (_gaussian_center_distance, (8, 32, 97, 19)),
    "gaussian_center_distance ade20k-C32": (_gaussian_center_distance, (8, 32, 64, 150)),
    "lovasz_hinge 97x97": (_lovasz_hinge, (8 * 19, 97 * 97)),
    "lovasz_hinge 769x769": (_lovasz_hinge, (2 * 19, 769 * 769)),
    "soft_class_pool cityscapes-C512": (_soft_class_pool, (8, 512, 97, 19)),
    "soft_class_pool ade20k-C512": (_soft_class_pool, (8, 512, 64, 150)),
    # test-sized shapes: partial tiles, the other constexpr branches, fp64
    "class_avg_pool small fp64": (_class_avg_pool, (2, 5, 7, 3, F64)),
    "deform_conv2d groups2-offset-groups4-stride2 no-mask": (_deform_conv2d, (1, 8, 7, 4, 3, 2, 1, 2, 4, False)),
    "deform_conv2d two-output-channel-blocks tf32": (_deform_conv2d, (1, 4, 4, 272, 2, 1, 0, 1, 1, True, F32, True)),
    "deform_conv2d resident-grad-out-tile bf16": (_deform_conv2d, (1, 4, 4, 200, 2, 1, 0, 1, 1, True, BF16)),
    "deform_conv2d small fp64": (_deform_conv2d, (1, 6, 7, 4, 3, 1, 1, 1, 1, True, F64)),
    "flow_warp zeros no-align": (_flow_warp, (2, 5, 9, 7, F32, "zeros", False)),
    "flow_warp small fp64": (_flow_warp, (1, 3, 6, 5, F64)),
    "gaussian_center_distance C200 fp64": (_gaussian_center_distance, (2, 200, 5, 3, F64)),
    "lovasz_hinge no-valid fp64": (_lovasz_hinge, (3, 50, False, F64)),
    "soft_class_pool small fp64": (_soft_class_pool, (2, 5, 6, 3, F64)),
}


# The spills left per Triton release (each compiles with its own ptxas), in bytes stored or loaded, whichever is
# larger; any other spill fails, so that the spill-free configurations stay so. 3.9 is CI's CPU venv; 3.6 is what
# PyTorch 2.11 ships (the lent GPU machine's), compiled by a second CI step (.ci/run). Its extra ones are the
# tensor-core deform_conv2d kernels' gathers beside a large accumulator. A release not listed only prints them.
SPILL_ALLOWANCE = {
    (3, 9): {
        # reloaded once per tap, none in the chunk loop
        ("deform_conv2d csfrnet-C512 fp32", "deform_conv2d._forward_kernel"): 60,
        # 11 reloads per (image, pixel tile) item against ~512 FMAs per thread
        ("deform_conv2d csfrnet-C512 fp32", "deform_conv2d._backward_weight_kernel"): 52,
        # reloaded once per tap, none in the chunk loop
        ("deform_conv2d csfrnet-C512 bf16", "deform_conv2d._forward_kernel"): 144,
        # in the prologue, while the resident grad_out tile is staged
        ("deform_conv2d csfrnet-C512 bf16", "deform_conv2d._backward_data_kernel"): 112,
        # a test-sized case, not a benchmark configuration
        ("deform_conv2d two-output-channel-blocks tf32", "deform_conv2d._backward_weight_kernel"): 8,
    },
    (3, 6): {
        ("class_avg_pool cityscapes-C512", "class_avg_pool._forward_kernel"): 8,
        ("class_avg_pool cityscapes-C32", "class_avg_pool._forward_kernel"): 8,
        ("deform_conv2d csfrnet-C512 bf16", "deform_conv2d._forward_kernel"): 196,
        ("deform_conv2d csfrnet-C512 bf16", "deform_conv2d._backward_data_kernel"): 268,
        ("deform_conv2d csfrnet-C32 fp32", "deform_conv2d._backward_data_kernel"): 4,
        ("deform_conv2d csfrnet-C32 bf16", "deform_conv2d._backward_data_kernel"): 8,
        # test-sized cases, not benchmark configurations
        ("deform_conv2d two-output-channel-blocks tf32", "deform_conv2d._forward_kernel"): 84,
        ("deform_conv2d two-output-channel-blocks tf32", "deform_conv2d._backward_data_kernel"): 32,
        ("deform_conv2d resident-grad-out-tile bf16", "deform_conv2d._forward_kernel"): 108,
        ("soft_class_pool small fp64", "soft_class_pool._grad_probs_kernel"): 32,
    },
}


COMPILED: dict[str, set[str]] = {}  # case -> the kernels it compiled, for test_every_kernel_is_compiled


@pytest.mark.parametrize("case", CASES)
def test_compiles_for_sm90(case, capsys):
    run, args = CASES[case]
    with compile_for_sm90() as compiled:
        run(*args)
    assert compiled, "no kernel launched"
    COMPILED[case] = {kernel.kernel for kernel in compiled}
    with capsys.disabled():
        print(f"\nsm_90 {case}:")
        for kernel in compiled:
            print(f"  {kernel.describe()}{'  SPILLS' if kernel.spill_stores or kernel.spill_loads else ''}")
    from fastseg.kernels import triton_release

    allowances = SPILL_ALLOWANCE.get(triton_release())
    if allowances is None:
        with capsys.disabled():
            print(f"  (spills not checked: no SPILL_ALLOWANCE for Triton {'.'.join(map(str, triton_release()))})")
    for kernel in compiled:
        assert kernel.shared <= SM90_SHARED_BYTES, f"{kernel.describe()}: over sm_90's {SM90_SHARED_BYTES} B"
        spilled = max(kernel.spill_stores, kernel.spill_loads)
        if allowances is not None:
            allowed = allowances.get((case, kernel.kernel), 0)
            assert spilled <= allowed, f"{kernel.describe()}: spills {spilled} B, {allowed} B allowed (SPILL_ALLOWANCE)"


def test_every_kernel_is_compiled():
    """Each `*_kernel` JIT function of kernels/ is launched by some case above (a new kernel needs a case)."""
    if COMPILED.keys() != CASES.keys():
        pytest.skip("runs after all the compile cases of this session (here some were deselected or failed)")
    from triton.runtime.jit import JITFunction

    import fastseg.kernels as package

    names = set()
    for module in pkgutil.iter_modules(package.__path__):
        members = vars(importlib.import_module(f"{package.__name__}.{module.name}"))
        names |= {f"{module.name}.{name}" for name, value in members.items()
                  if isinstance(value, JITFunction) and name.endswith("_kernel")}
    assert len(names) >= 15, sorted(names)
    assert names == set().union(*COMPILED.values())
