"""Hostile arguments: every case is a clean ValueError naming the argument, never a crash or a silent result.

Cases that crashed the process before (SIGSEGV, SIGFPE) run in a subprocess (tests/ops/isolated.py)."""
from __future__ import annotations

import pytest
import torch

from fastseg import ops
from fastseg.ops import extension
from isolated import assert_clean_error, run_isolated

needs_cpp = pytest.mark.skipif(not extension.available(), reason=f"fastseg._C: {extension.unavailable_reason()}")


@needs_cpp
@pytest.mark.parametrize("shape", [(2, 4, 0, 0), (2, 4, 0, 7)])
def test_deform_conv2d_on_an_empty_image_is_a_value_error(shape):
    """Was SIGSEGV: a null read in fill_columns (zero-size input plane, padding 1)."""
    assert_clean_error(f"ops.deform_conv2d(torch.randn{shape}, torch.randn(2, 2, 2, 2 + {shape[3]}), "
                       "torch.randn(5, 4, 1, 1), padding=1, backend='cpu')", "ValueError", "non-empty spatial size")
    assert_clean_error(f"torch.ops.fastseg.deform_conv2d(torch.randn{shape}, torch.randn(2, 2, 2, 2 + {shape[3]}), "
                       "torch.randn(5, 4, 1, 1), None, None, [1, 1], [1, 1], [1, 1])", "ValueError",
                       "non-empty spatial size")


RAW_DEFORM = "x, off, w = torch.randn(1, 2, 5, 5), torch.randn(1, 18, 5, 5), torch.randn(3, 2, 3, 3)\n"
RAW_DEFORM_CASES = {
    "zero stride, forward (was SIGFPE)": (
        "torch.ops.fastseg.deform_conv2d(x, off, w, None, None, [0, 0], [1, 1], [1, 1])", "stride must be positive"),
    "zero stride, backward (was SIGFPE)": (
        "torch.ops.fastseg.deform_conv2d_backward(torch.randn(1, 3, 5, 5), x, off, w, None, [0, 0], [1, 1], [1, 1])",
        "stride must be positive"),
    "zero dilation": (
        "torch.ops.fastseg.deform_conv2d(x, off, w, None, None, [1, 1], [1, 1], [0, 1])", "dilation must be positive"),
    "negative padding": (
        "torch.ops.fastseg.deform_conv2d(x, off, w, None, None, [1, 1], [-1, 1], [1, 1])", "padding must be"),
    "huge padding": (
        "torch.ops.fastseg.deform_conv2d(x, off, w, None, None, [1, 1], [2**62, 1], [1, 1])", "at most 2^31-1"),
    "no input channels (was SIGFPE: groups = 0)": (
        "torch.ops.fastseg.deform_conv2d(torch.randn(1, 0, 5, 5), off, w, None, None, [1, 1], [1, 1], [1, 1])",
        "in_channels must be a positive multiple"),
    "float64 weight": (
        "torch.ops.fastseg.deform_conv2d(x, off, w.double(), None, None, [1, 1], [1, 1], [1, 1])",
        "must have the input's dtype"),
    "wrong-size bias": (
        "torch.ops.fastseg.deform_conv2d(x, off, w, None, torch.randn(7), [1, 1], [1, 1], [1, 1])",
        "bias must be (C_out,)"),
    "float64 bias": (
        "torch.ops.fastseg.deform_conv2d(x, off, w, None, torch.randn(3).double(), [1, 1], [1, 1], [1, 1])",
        "bias must have the input's dtype"),
    "float64 grad_output": (
        "torch.ops.fastseg.deform_conv2d_backward(torch.randn(1, 3, 5, 5).double(), x, off, w, None, [1, 1], [1, 1],"
        " [1, 1])", "grad_output must have the input's dtype"),
    "integer input": (
        "torch.ops.fastseg.deform_conv2d(x.long(), off.long(), w.long(), None, None, [1, 1], [1, 1], [1, 1])",
        "input must be floating point"),
    "too small for the kernel": (
        "torch.ops.fastseg.deform_conv2d(x[..., :1, :1], off, w, None, None, [1, 1], [0, 0], [1, 1])",
        "too small for the kernel"),
    "float64 mask": (
        "torch.ops.fastseg.deform_conv2d(x, off, w, torch.rand(1, 9, 5, 5).double(), None, [1, 1], [1, 1], [1, 1])",
        "mask must be"),
}


@needs_cpp
@pytest.mark.parametrize("case", RAW_DEFORM_CASES, ids=list(RAW_DEFORM_CASES))
def test_raw_deform_conv2d_checks_stand_on_their_own(case):
    """torch.ops.fastseg.* is callable without the Python front end: its C++ checks catch every bad argument."""
    call, match = RAW_DEFORM_CASES[case]
    assert_clean_error(RAW_DEFORM + call, "ValueError", match)


@needs_cpp
def test_raw_class_avg_pool_rejects_a_class_count_beyond_int32():
    assert_clean_error("torch.ops.fastseg.class_avg_pool(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3).long(), "
                       "2**40, 255)", "ValueError", "num_classes must be in [1, 2^31-1)")


def test_reference_flow_warp_backward_with_a_nan_flow_and_border_padding_does_not_crash():
    """Was SIGSEGV inside PyTorch's grid_sample backward (border padding, NaN grid): the reference guards it."""
    result = run_isolated("""
        x = torch.randn(2, 3, 6, 7, requires_grad=True)
        flow = torch.randn(2, 2, 6, 7, requires_grad=True)
        with torch.no_grad():
            flow[0, 0, 2, 3] = float('nan')
            flow[1, 1, 0, 0] = float('inf')
        out = ops.flow_warp(x, flow, 'border', True, backend='reference')
        out.backward(torch.randn_like(out))
        print('nan outputs', int(out.isnan().sum()), 'finite grads', bool(x.grad.isfinite().all()),
              bool(flow.grad.isfinite().all()))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nan outputs 6 finite grads True True" in result.stdout, result.stdout


def _deform_args(**change):
    args = dict(input=torch.randn(1, 2, 5, 5), offset=torch.randn(1, 18, 5, 5), weight=torch.randn(3, 2, 3, 3),
                padding=1)
    args.update(change)
    return args


def _flow_args(**change):
    args = dict(input=torch.randn(1, 2, 4, 4), flow=torch.randn(1, 2, 4, 4))
    args.update(change)
    return args


def _pool_args(**change):
    args = dict(features=torch.randn(2, 3, 4, 4), labels=torch.randint(0, 4, (2, 4, 4)), num_classes=4)
    args.update(change)
    return args


def _lovasz_args(**change):
    args = dict(probs=torch.rand(2, 4, 3, 3).softmax(1), labels=torch.randint(0, 4, (2, 3, 3)))
    args.update(change)
    return args


# (function, keyword arguments, text the ValueError must contain: the argument's name)
VALUE_ERRORS = {
    "align_corners='False'": (ops.flow_warp, _flow_args(align_corners="False"), "align_corners"),
    "align_corners='no'": (ops.flow_warp, _flow_args(align_corners="no"), "align_corners"),
    "align_corners=2": (ops.flow_warp, _flow_args(align_corners=2), "align_corners"),
    "FlowWarp(align_corners='no')": (ops.FlowWarp, dict(align_corners="no"), "align_corners"),
    "input_size=(0, 0)": (ops.normalized_flow_to_pixels, dict(flow=torch.randn(1, 2, 3, 3), input_size=(0, 0)),
                          "input_size"),
    "input_size negative": (ops.normalized_flow_to_pixels, dict(flow=torch.randn(1, 2, 3, 3), input_size=(-4, 5)),
                            "input_size"),
    "input_size float": (ops.normalized_flow_to_pixels, dict(flow=torch.randn(1, 2, 3, 3), input_size=(4.5, 5)),
                         "input_size"),
    "normalized align_corners=1": (ops.normalized_flow_to_pixels,
                                   dict(flow=torch.randn(1, 2, 3, 3), input_size=(4, 5), align_corners=1),
                                   "align_corners"),
    "num_classes=4.5": (ops.class_avg_pool, _pool_args(num_classes=4.5), "num_classes"),
    "num_classes='4'": (ops.class_avg_pool, _pool_args(num_classes="4"), "num_classes"),
    "num_classes=0": (ops.class_avg_pool, _pool_args(num_classes=0), "num_classes"),
    "class_avg_pool ignore_index=None": (ops.class_avg_pool, _pool_args(ignore_index=None), "ignore_index"),
    "downsample_labels size=0": (ops.downsample_labels, dict(labels=torch.zeros(1, 4, 4).long(), size=0), "size"),
    "downsample_labels size=(2, -1)": (ops.downsample_labels, dict(labels=torch.zeros(1, 4, 4).long(), size=(2, -1)),
                                       "size"),
    "downsample_labels size=2.5": (ops.downsample_labels, dict(labels=torch.zeros(1, 4, 4).long(), size=2.5), "size"),
    "lovasz_softmax ignore_index=None": (ops.lovasz_softmax, _lovasz_args(ignore_index=None), "ignore_index"),
    "lovasz_softmax classes=[True]": (ops.lovasz_softmax, _lovasz_args(classes=[True]), "classes"),
    "lovasz_softmax classes=7": (ops.lovasz_softmax, _lovasz_args(classes=7), "classes"),
    "lovasz_softmax per_image with B=0": (
        ops.lovasz_softmax, _lovasz_args(probs=torch.rand(0, 4, 3, 3), labels=torch.zeros(0, 3, 3).long(),
                                         per_image=True), "per_image"),
    "lovasz_softmax per_image='yes'": (ops.lovasz_softmax, _lovasz_args(per_image="yes"), "per_image"),
    "meta input, cpu flow": (ops.flow_warp, _flow_args(input=torch.randn(1, 2, 4, 4, device="meta")),
                             "flow is on cpu but input is on meta"),
    "meta features, cpu labels": (ops.class_avg_pool, _pool_args(features=torch.randn(2, 3, 4, 4, device="meta")),
                                  "labels is on cpu but features is on meta"),
    "stride=torch.tensor(1)": (ops.deform_conv2d, _deform_args(stride=torch.tensor(1)), "stride"),
    "stride=True": (ops.deform_conv2d, _deform_args(stride=True), "stride"),
    "stride=(1, 1, 1)": (ops.deform_conv2d, _deform_args(stride=(1, 1, 1)), "stride"),
    "padding=2**40": (ops.deform_conv2d, _deform_args(padding=2**40), "padding"),
    "deform on an empty image": (ops.deform_conv2d, _deform_args(input=torch.randn(1, 2, 0, 5),
                                                                 offset=torch.randn(1, 18, 2, 7)), "input"),
    "deform with no channels": (ops.deform_conv2d, _deform_args(input=torch.randn(1, 0, 5, 5)), "in_channels"),
}


@pytest.mark.parametrize("case", VALUE_ERRORS, ids=list(VALUE_ERRORS))
def test_bad_arguments_are_value_errors_naming_the_argument(case):
    function, kwargs, name = VALUE_ERRORS[case]
    with pytest.raises(ValueError, match=name.replace("(", r"\(").replace(")", r"\)")):
        function(**kwargs)


def test_downsample_labels_keeps_int64_labels_exact():
    """Was a round trip through float32: 2**24 + 1 became 2**24."""
    labels = torch.randint(0, 5, (2, 9, 11)) + (2**24 + 1)
    labels[0, 0, 0] = 2**53 + 3
    small = ops.downsample_labels(labels, (4, 5))
    # F.interpolate's own nearest rule on the (exact) float64 labels gives the expected values
    expected = torch.nn.functional.interpolate(labels[:, None].double(), size=(4, 5), mode="nearest")[:, 0]
    assert small.dtype == torch.int64
    assert torch.equal(small[:, 1:], expected[:, 1:].long()), "every value of the (exact) float64 path matches"
    assert small[0, 0, 0] == 2**53 + 3 and small.min() >= 2**24 + 1


def test_downsample_labels_follows_interpolate_for_upsampling_too():
    labels = torch.randint(0, 19, (1, 5, 7))
    expected = torch.nn.functional.interpolate(labels[:, None].float(), size=(12, 3), mode="nearest")[:, 0].long()
    assert torch.equal(ops.downsample_labels(labels, (12, 3)), expected)


def test_meta_tensors_propagate_shapes():
    """All-meta inputs run the reference, shapes only (what models.summary counts MACs with); was a
    ValueError, before that an error from reading a meta tensor's values."""
    meta = torch.device("meta")
    centers, counts = ops.class_avg_pool(torch.randn(2, 3, 4, 4, device=meta),
                                         torch.zeros(2, 4, 4, dtype=torch.long, device=meta), 5)
    assert centers.shape == (2, 5, 3) and counts.shape == (2, 5) and centers.device == meta
    assert ops.flow_warp(torch.randn(1, 2, 4, 4, device=meta), torch.randn(1, 2, 6, 6, device=meta)).shape == (1, 2, 6, 6)
    output = ops.deform_conv2d(torch.randn(1, 2, 5, 5, device=meta), torch.randn(1, 18, 5, 5, device=meta),
                               torch.randn(3, 2, 3, 3, device=meta), padding=1)
    assert output.shape == (1, 3, 5, 5) and output.device == meta
