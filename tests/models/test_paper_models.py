"""What every paper model must do: train/eval outputs, weighted finite losses, the fused ops it is
built on, a short overfit, and torch.compile(fullgraph=True) forward + backward equal to eager.

Every registered model is tested: its registry entry (``model_info``) gives the tiny build options
(so that the tests run in seconds on a CPU) and the ``torch.ops.fastseg`` ops a training step must call.
"""
from __future__ import annotations

import multiprocessing

import pytest
import torch

from fastseg.models import build_model, list_models, model_info
from fastseg.ops import FusedOpRecorder

NUM_CLASSES = 5
SIZE = 64

MODELS = list_models()  # every registered model, baselines included


def _batch(batch: int = 2, size: int = SIZE, cell: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose colour follows the labels (constant on cell x cell squares, some pixels ignored).

    16-pixel cells: the stride-4 edge maps of the edge-supervised models need boundaries farther apart
    than the 4-pixel band of the edge ground truth (radius 2) to fit them in a few steps."""
    grid = torch.randint(0, NUM_CLASSES, (batch, size // cell, size // cell))
    labels = grid.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
    palette = torch.randn(NUM_CLASSES, 3)
    images = palette[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(batch, 3, size, size)
    labels[:, :2] = 255
    return images.contiguous(), labels


def _build(name: str, **extra) -> torch.nn.Module:
    return build_model(name, NUM_CLASSES, **{**model_info(name).test_options, **extra})


def test_paper_models_are_registered():
    paper_models = {"acfnet", "fenet", *(f"decouple_{h}" for h in ("fcn", "pspnet", "deeplabv3plus")),
                    *(f"csfrnet_{h}" for h in ("fcn", "pspnet", "nonlocal", "deeplabv3plus"))}
    assert paper_models <= {name for name in MODELS if not model_info(name).baseline}


@pytest.mark.parametrize("name", MODELS)
def test_every_registered_model_is_covered(name):
    """The contract tests below run every registered model; its entry must say how (a tiny build)."""
    info = model_info(name)
    assert info.paper, f"{name}: register_model(..., paper=...) is missing"
    assert info.test_options.get("backbone") in ("resnet18", "resnet34"), \
        f"{name}: register_model(..., test_options=...) must build a tiny model (resnet18/34)"


@pytest.mark.parametrize("name", MODELS)
def test_outputs_losses_and_gradients(name):
    model = _build(name)
    images, labels = _batch()
    outputs = model(images)
    assert isinstance(outputs, dict) and outputs, "training mode returns a dict of named outputs"
    for key, value in outputs.items():
        assert value.shape[0] == 2 and torch.isfinite(value).all(), key
    losses = model.loss(outputs, labels)
    parts = {k: v for k, v in losses.items() if k != "total"}
    print(f"{name}: " + ", ".join(f"{k}={v.item():.4f}" for k, v in losses.items()))
    assert parts and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(losses["total"], sum(parts.values()))
    losses["total"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 72, 56))
    assert logits.shape == (1, NUM_CLASSES, 72, 56)


@pytest.mark.parametrize("name", MODELS)
def test_training_step_calls_the_fused_ops(name):
    model = _build(name)
    images, labels = _batch()
    with FusedOpRecorder() as recorder:
        model.loss(model(images), labels)["total"].backward()
    expected = model_info(name).fused_ops
    print(f"{name}: fastseg ops called: {sorted(recorder.called)}")
    assert expected <= recorder.called


@pytest.mark.parametrize("name", MODELS)
def test_short_overfit_lowers_the_total_loss(name, fit_one_batch):
    model = _build(name, dropout=0.0)
    images, labels = _batch()
    history = fit_one_batch(model, images, labels, torch.optim.Adam(model.parameters(), lr=2e-3), steps=20)
    print(f"{name}: total loss {history[0]:.3f} -> {history[-1]:.3f}")
    assert history[-1] < 0.7 * history[0]


def _compiled_matches_eager(name: str, backend: str, dtype: torch.dtype = torch.float32) -> None:
    model = _build(name, dropout=0.0).to(dtype)
    eager = _build(name, dropout=0.0).to(dtype)
    eager.load_state_dict(model.state_dict())
    images, labels = _batch()
    images = images.to(dtype)

    def total_loss(net, x, y):
        return net.loss(net(x), y)["total"]

    compiled = torch.compile(total_loss, fullgraph=True, backend=backend)
    compiled_total = compiled(model, images, labels)
    eager_total = total_loss(eager, images, labels)
    torch.testing.assert_close(compiled_total, eager_total, rtol=1e-4, atol=1e-5)
    compiled_total.backward()
    eager_total.backward()
    for (param_name, p), q in zip(model.named_parameters(), eager.parameters()):
        if q.grad is None:
            assert p.grad is None, param_name
        else:
            torch.testing.assert_close(
                p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=lambda message, param_name=param_name: f"{param_name}: {message}"
            )


@pytest.mark.parametrize("name", MODELS)
def test_compile_fullgraph_matches_eager(name):
    torch._dynamo.reset()
    _compiled_matches_eager(name, "aot_eager")


def test_inductor_compile_matches_eager(tmp_path, monkeypatch):
    """Inductor (generated C++ kernels around the fused custom ops) on CSFRNet, which calls four of them.

    In float64: in float32, inductor's reordered sums differ from eager by ~1e-7 relative, and the
    training-mode BatchNorms of this tiny random network (batch 2, 8x8 maps, near-constant channels)
    amplify that to ~1% in the first layers' gradients, for the plain ``fcn`` baseline as well; in
    float64 compiled and eager agree to the tolerance below.

    In a fresh spawned process with its own inductor cache: run after the whole suite, the comparison
    once failed on a saved convolution output whose run-time strides (channels-last) differed from the
    traced ones, which no subset of the suite reproduced; what earlier tests left in the process or in
    the machine-wide inductor cache is not what this test is about."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-cache"))
    process = multiprocessing.get_context("spawn").Process(
        target=_compiled_matches_eager, args=("csfrnet_fcn", "inductor", torch.float64))
    process.start()
    process.join(timeout=600)
    assert process.exitcode == 0, "compiled and eager differ (the assertion is in the captured stderr above)"
