"""FusedOpRecorder: sees the fastseg ops of the chosen backend, none under the reference."""
from __future__ import annotations

import pytest
import torch

from fastseg import ops
from fastseg.ops import extension


def _warp_and_pool():
    features = torch.randn(2, 8, 12, 12, requires_grad=True)
    flow = 2 * torch.randn(2, 2, 12, 12)
    labels = torch.randint(0, 4, (2, 12, 12))
    warped = ops.flow_warp(features, flow)
    centers, _ = ops.class_avg_pool(warped, labels, num_classes=4)
    centers.sum().backward()


def test_reference_backend_dispatches_no_fused_op():
    with ops.use_backend("reference"), ops.FusedOpRecorder() as recorder:
        _warp_and_pool()
    assert recorder.called == set()


def test_cpu_backend_dispatches_the_ops_and_their_backward():
    if not extension.available():
        pytest.skip(f"fastseg._C is not usable: {extension.unavailable_reason()}")
    with ops.use_backend("auto"), ops.FusedOpRecorder() as recorder:
        _warp_and_pool()
    print("called:", sorted(recorder.called))
    assert {"flow_warp", "flow_warp_backward"} <= recorder.called
    assert any(name.startswith("class_avg_pool") for name in recorder.called)
