"""Mixed precision: each op's autocast policy (fastseg.ops.library), the same on every backend."""
from __future__ import annotations

import pytest
import torch

from fastseg import ops
from fastseg.ops import extension
from fastseg.ops.class_avg_pool import CLASS_AVG_POOL
from fastseg.ops.deform_conv2d import DEFORM_CONV2D
from fastseg.ops.flow_warp import FLOW_WARP
from fastseg.ops.gaussian_center_distance import GAUSSIAN_CENTER_DISTANCE
from fastseg.ops.library import FusedOp
from fastseg.ops.lovasz_hinge import LOVASZ_HINGE
from fastseg.ops.soft_class_pool import ATTENTIONAL_CLASS_FEATURE, SOFT_CLASS_POOL

BF16 = torch.bfloat16


def _deform(backend, device="cpu"):
    # input and offset in bf16 (conv outputs under autocast), weight and bias fp32 parameters
    input, offset = torch.randn(2, 4, 7, 7, dtype=BF16, device=device), torch.randn(2, 18, 7, 7, dtype=BF16, device=device)
    weight, bias = torch.randn(6, 4, 3, 3, device=device), torch.randn(6, device=device)
    return (input, offset, weight, bias), lambda *t: ops.deform_conv2d(*t, padding=1, backend=backend)


def _attend(backend, device="cpu"):
    # features bf16 (a conv output), probabilities fp32 (autocast runs softmax in fp32)
    features = torch.randn(2, 8, 5, 6, dtype=BF16, device=device)
    probs = torch.softmax(torch.randn(2, 3, 5, 6, device=device), 1)
    return (features, probs), lambda *t: ops.attentional_class_feature(*t, backend=backend)


def _pool(backend, device="cpu"):
    features = torch.randn(2, 8, 5, 6, dtype=BF16, device=device)
    probs = torch.softmax(torch.randn(2, 3, 5, 6, device=device), 1)
    return (features, probs), lambda *t: ops.soft_class_pool(*t, backend=backend)


def _gaussian(backend, device="cpu"):
    embeddings = torch.randn(2, 4, 5, 6, dtype=BF16, device=device)
    centers = torch.randn(2, 3, 4, dtype=BF16, device=device)
    # m * delta in [-3.5, -1.5]: scales 0.03-0.22, so that phi (squared distances ~8) is not saturated at 1
    margins = torch.rand(2, 3, device=device) * 0.2 - 0.35
    return (embeddings, centers, margins), lambda *t: ops.gaussian_center_distance(*t, 10.0, backend=backend)


def _lovasz(backend, device="cpu"):
    logits, labels = torch.randn(6, 40, dtype=BF16, device=device), torch.rand(6, 40, device=device) > 0.5
    return (logits,), lambda logits: ops.lovasz_hinge(logits, labels, backend=backend)


POLICIES = [(DEFORM_CONV2D, _deform, "lower"), (ATTENTIONAL_CLASS_FEATURE, _attend, "lower"),
            (SOFT_CLASS_POOL, _pool, "lower"), (GAUSSIAN_CENTER_DISTANCE, _gaussian, "fp32"),
            (LOVASZ_HINGE, _lovasz, "fp32")]  # fmt: skip


def test_every_op_declares_its_policy():
    declared = {op.name: op.autocast for op in (CLASS_AVG_POOL, FLOW_WARP, *(p[0] for p in POLICIES))}
    assert declared == {"class_avg_pool": None, "flow_warp": None, "deform_conv2d": "lower",
                        "attentional_class_feature": "lower", "soft_class_pool": "lower",
                        "gaussian_center_distance": "fp32", "lovasz_hinge": "fp32"}
    with pytest.raises(ValueError, match="autocast must be one of"):
        FusedOp("x", None, None, None, None, None, None, None, autocast="fp16")


@pytest.mark.parametrize("op, make, policy", POLICIES, ids=[p[0].name for p in POLICIES])
def test_autocast_casts_the_inputs_once_on_every_backend(op, make, policy, differentiable):
    backend, device = differentiable
    inputs, call = make(backend, device)
    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.autocast(device.type, dtype=BF16):
        out = call(*leaves)
    cast = BF16 if policy == "lower" else torch.float32
    first = out[0] if isinstance(out, tuple) else out
    assert first.dtype == cast
    expected = call(*(t.detach().to(cast) for t in inputs))  # the same op on inputs cast by hand, autocast off
    expected = expected[0] if isinstance(expected, tuple) else expected
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    first.float().square().sum().backward()
    for leaf in leaves:  # gradients flow back through the casts, in each input's own dtype
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype and leaf.grad.abs().sum() > 0


def test_mixed_dtypes_without_autocast_stay_an_error():
    (input, offset, weight, bias), call = _deform("reference")
    with pytest.raises(ValueError, match="weight has dtype torch.float32 but input has torch.bfloat16"):
        call(input, offset, weight, bias)
    (features, probs), call = _attend("reference")
    with pytest.raises(ValueError, match="probs has dtype torch.float32 but features has torch.bfloat16"):
        call(features, probs)


@pytest.mark.skipif(not extension.available(), reason="fastseg._C is not built")
def test_the_registered_op_casts_when_called_directly():
    (features, probs), _ = _attend("cpu")
    with torch.autocast("cpu", dtype=BF16):
        attended, centers, mass = torch.ops.fastseg.attentional_class_feature(features, probs)
    expected = torch.ops.fastseg.attentional_class_feature(features, probs.to(BF16))
    assert attended.dtype == centers.dtype == BF16
    torch.testing.assert_close(attended, expected[0], rtol=0, atol=0)


def test_ops_without_a_policy_run_in_their_inputs_dtype():
    features, labels = torch.randn(2, 4, 5, 6, dtype=BF16), torch.randint(0, 3, (2, 5, 6))
    flow = torch.randn(2, 2, 5, 6)
    with torch.autocast("cpu", dtype=BF16):
        assert ops.class_avg_pool(features.float(), labels, 3)[0].dtype == torch.float32
        assert ops.flow_warp(features.float(), flow.to(BF16)).dtype == torch.float32
