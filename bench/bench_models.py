"""Model-level benchmarks: a training step and inference of the paper models, in four variants.

Each case times, for one model and backbone (ResNet-50, ResNet-101):
  - ``train``: zero_grad, forward, ``model.loss(...)["total"]``, backward and an SGD step
    (momentum 0.9, weight decay 1e-4, as in the papers);
  - ``infer``: an eval-mode forward under ``torch.no_grad`` (logits at input resolution);
in the variants
  - ``fused``: fastseg's fused ops (backend "auto"), eager;
  - ``fused-compiled``: the same, the whole train step (or the model) under ``torch.compile``;
  - ``reference``: the plain-PyTorch reference ops, eager;
  - ``reference-compiled``: the reference ops under ``torch.compile``.
Compilation and warm-up steps run outside the timing. ``extra_info`` holds the peak memory of one
step (see peak_memory.py), images per second, parameters, forward conv/linear FLOPs per image and,
for the eager variants, the ``torch.ops.fastseg`` ops one step ran (none for ``reference``: checked).

Models: those whose registry entry has a ``bench_crop``. Shapes: that crop, the paper's Cityscapes
crop (ACFNet and CSFRNet 769, DecoupleSegNet 832, FENet 1024),
batch 8, 19 classes on GPU; batch 2 at FASTSEG_BENCH_CPU_SIZE (128) px on CPU; a smoke run
(--benchmark-disable) runs one step at 32 px of the ResNet-50 eager variants only.
``deeplabv3plus`` (the baseline the paper models extend) is benchmarked alongside.

Cases run in priority order (ResNet-50 training of the models with targets first). With
FASTSEG_BENCH_DEADLINE (Unix time) set, a case that could not finish before it is skipped with
the reason printed, so that a GPU session ends in its time budget with the most important cases.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import time

import pytest
import torch

from conftest import DEVICE, ON_GPU, deadline_reason, device_name, synchronize
from fastseg import ops
from fastseg.models import build_model, list_models, model_info, summary
from peak_memory import peak_memory

NUM_CLASSES = 19
IGNORE_INDEX = 255
# the registry's bench_crop: the Cityscapes crop of each paper's training setup; priority order: the
# paper models first, the baselines they extend last
MODELS = tuple(
    sorted((m for m in list_models() if model_info(m).bench_crop), key=lambda m: (model_info(m).baseline, m))
)
BACKBONES = ("resnet50", "resnet101")
MODES = ("train", "infer")
VARIANTS = ("reference", "fused-compiled", "fused", "reference-compiled")
BATCH = 8 if ON_GPU else 2
CPU_SIZE = int(os.environ.get("FASTSEG_BENCH_CPU_SIZE", "128"))
SMOKE_SIZE = 32
WARMUP_STEPS = 3  # a compiled train step recompiles once the optimizer has momentum buffers
ROUNDS = 10 if ON_GPU else 5
# time a case may need beyond its timed rounds, for FASTSEG_BENCH_DEADLINE (compilation dominates)
SETUP_SECONDS = {"compiled": 180.0, "eager": 60.0}


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    backbone: str
    mode: str
    variant: str

    @property
    def id(self) -> str:
        return f"{self.mode}-{self.model}-{self.backbone}-{self.variant}"

    @property
    def compiled(self) -> bool:
        return self.variant.endswith("-compiled")

    @property
    def backend(self) -> str:
        return "reference" if self.variant.startswith("reference") else "auto"


def _priority(case: Case) -> tuple[int, ...]:
    return (BACKBONES.index(case.backbone), MODES.index(case.mode), MODELS.index(case.model),
            VARIANTS.index(case.variant))


CASES = sorted(
    (Case(m, b, mode, v) for m in MODELS for b in BACKBONES for mode in MODES for v in VARIANTS), key=_priority
)


def _size(case: Case, smoke: bool) -> int:
    if smoke:
        return SMOKE_SIZE
    return model_info(case.model).bench_crop if ON_GPU else CPU_SIZE


def _batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (B, 3, S, S) and labels (B, S, S) with 5% ignored pixels."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, size, size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (BATCH, size, size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.05] = IGNORE_INDEX
    return images.to(DEVICE), labels.to(DEVICE)


def _skip_reason(case: Case, smoke: bool) -> str | None:
    if smoke and case.compiled:
        return "smoke run: compiling a whole model takes minutes on a CPU (tests/models compile every paper model)"
    if smoke and case.backbone != BACKBONES[0]:
        return f"smoke run: {BACKBONES[0]} proves the code path, {case.backbone} only adds blocks"
    return deadline_reason(SETUP_SECONDS["compiled" if case.compiled else "eager"])


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        total = model.loss(model(images), labels)["total"]
        total.backward()
        optimizer.step()
        return total.detach()

    return step


def _infer_step(model: torch.nn.Module):
    def step(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(images)

    return step


def _check_backend(case: Case, called: set[str]) -> None:
    """The reference variant must not reach a fused op (a model that picks its own backend would)."""
    if case.backend == "reference" and called:
        raise AssertionError(f"{case.id} ran the fused ops {sorted(called)} under use_backend('reference')")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_model(benchmark, case):
    smoke = benchmark.disabled
    reason = _skip_reason(case, smoke)
    if reason:
        pytest.skip(reason)
    size = _size(case, smoke)
    torch.manual_seed(0)
    torch._dynamo.reset()
    gc.collect()  # the previous case's model, optimizer and compiled graphs
    if ON_GPU:
        torch.cuda.empty_cache()
    model = build_model(case.model, NUM_CLASSES, backbone=case.backbone).to(DEVICE)
    images, labels = _batch(size)
    flops = 0 if smoke else summary(model, (3, size, size), print_table=False).total_flops
    if case.mode == "train":
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        step, inputs = _train_step(model, optimizer), (images, labels)

        def release():
            optimizer.zero_grad(set_to_none=True)

        def live():
            state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
            return [*model.parameters(), *model.buffers(), *state, images, labels]
    else:
        model.eval()
        step, inputs = _infer_step(model), (images,)

        def release():
            pass

        def live():
            return [*model.parameters(), *model.buffers(), images]

    if case.compiled:
        step = torch.compile(step)

    def timed():
        step(*inputs)
        synchronize()

    benchmark.group = f"model {case.mode} {case.model} {case.backbone} B={BATCH} {size}x{size}"
    with ops.use_backend(case.backend):
        if smoke:  # the one untimed step also checks the backend
            with ops.FusedOpRecorder() as recorder:
                benchmark.pedantic(timed, rounds=1, iterations=1)
            _check_backend(case, recorder.called)
            return
        start = time.perf_counter()
        for _ in range(WARMUP_STEPS):
            timed()
        warmup_seconds = time.perf_counter() - start
        benchmark.pedantic(timed, rounds=ROUNDS, iterations=1)
        peak_bytes, memory_method = peak_memory(timed, DEVICE, live, release)
        fused_ops = None
        if not case.compiled:
            with ops.FusedOpRecorder() as recorder:
                timed()
            _check_backend(case, recorder.called)
            fused_ops = sorted(recorder.called)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        device=device_name(),
        torch=torch.__version__,
        model=case.model,
        backbone=case.backbone,
        mode=case.mode,
        variant=case.variant,
        batch=BATCH,
        size=size,
        images_per_s=BATCH / median,
        peak_bytes=peak_bytes,
        memory_method=memory_method,
        fused_ops=fused_ops,
        warmup_seconds=warmup_seconds,
        params=sum(p.numel() for p in model.parameters()),
        forward_flops_per_image=flops,
        cpu_count=os.cpu_count(),
    )
