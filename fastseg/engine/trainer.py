"""The training loop: SGD with the poly schedule, AMP, torch.compile, DDP, periodic evaluation, exact resume.

A run is described by its config (see ``fastseg/configs/default.yaml``); the ``train`` section is
:data:`TRAIN_DEFAULTS` (``fastseg/configs/_base_/train.yaml``) updated by the config's own keys.
``batch_size`` is the global batch: each of W ranks takes ``batch_size / W`` samples per step, so a run's
result does not depend on the GPU count.

Resume: the checkpoint holds the model, optimizer, LR schedule, AMP scaler, iteration and every rank's
RNG states; the data order and each sample's augmentation are functions of (seed, step) (see
:mod:`fastseg.engine.train_loader`), so a resumed run continues as the uninterrupted run would.

Non-finite losses: after the backward pass one boolean per step (OR-ed over ranks) is read on the host,
the only per-step synchronisation besides DDP's; a bad step updates nothing (the BatchNorm running
statistics its forward pass changed are put back), is logged, and ``max_bad_steps`` bad steps in a row
stop training with :class:`NonFiniteLossError`. No checkpoint is written during such a streak, nor one
whose weights hold a NaN/Inf. A due checkpoint is written before the evaluation of the same iteration,
so a failing evaluation never loses training.
"""
from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fastseg.engine.builders import build_dataset_from_config, build_model_from_config
from fastseg.engine.checkpoint import (
    BEST_NAME,
    LATEST_NAME,
    load_checkpoint,
    nonfinite_tensors,
    remove_orphan_temp_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fastseg.engine.config import load_config, save_config
from fastseg.engine.distributed import DistributedContext, any_true, barrier, gather_objects, mean_over_ranks
from fastseg.engine.evaluator import evaluate
from fastseg.engine.inference import inference_options, predict_logits
from fastseg.engine.logging import ProgressBar, RunLogger, drop_records_after, worst_classes
from fastseg.engine.lr_schedule import PolyLR
from fastseg.engine.train_loader import build_eval_loader, build_train_loader, class_uniform_from_config
from fastseg.engine.visualize import dataset_palette, denormalize, save_predictions
from fastseg.models import convert_sync_batchnorm

TRAIN_DEFAULTS: dict[str, Any] = load_config("_base_/train")["train"]  # every train option, its default
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """Training stopped after ``max_bad_steps`` consecutive steps with a NaN/Inf loss."""


def train_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's ``train`` section over :data:`TRAIN_DEFAULTS`; unknown keys are an error."""
    section = dict(config.get("train") or {})
    unknown = sorted(set(section) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown train option(s) {unknown}; known: {sorted(TRAIN_DEFAULTS)}")
    options = {**TRAIN_DEFAULTS, **section}
    if options["amp"] not in AMP_DTYPES:
        raise ValueError(f"train.amp must be one of {sorted(AMP_DTYPES)}, got {options['amp']!r}")
    return options


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One training run.

    Args:
        config: the resolved run config (``model``, ``data``, ``train``, ``evaluate`` sections).
        output_dir: where the run writes config.yaml, log.jsonl, tensorboard/, checkpoints, predictions/.
        context: this process's rank, world size and device (:func:`~fastseg.engine.distributed.init_distributed`).
        resume: a checkpoint written by a previous run of this config to continue from.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        output_dir: str | os.PathLike,
        context: DistributedContext | None = None,
        resume: str | os.PathLike | None = None,
    ) -> None:
        self.context = context or DistributedContext()
        self.options = train_options(config)
        self.config = {**copy.deepcopy(dict(config)), "train": dict(self.options)}
        self.output_dir = Path(output_dir)
        self.device = self.context.device
        opts, ctx = self.options, self.context
        if ctx.is_main:  # left by a run killed while writing a checkpoint
            remove_orphan_temp_files(self.output_dir)
        if opts["batch_size"] % ctx.world_size:
            raise ValueError(f"train.batch_size {opts['batch_size']} (global) is not divisible by {ctx.world_size} ranks")
        self.config["run"] = {"world_size": ctx.world_size, "batch_per_rank": opts["batch_size"] // ctx.world_size}
        data = self.config["data"]
        if opts["skip_bad"]:
            for split in ("train", "val"):
                if split in data and data["dataset"] != "synthetic":
                    data[split] = {**data[split], "skip_bad": True}
        self.num_classes, self.ignore_index = data["num_classes"], data.get("ignore_index", 255)

        seed_everything(opts["seed"] + ctx.rank)
        model = build_model_from_config(self.config).to(self.device)
        if ctx.distributed and opts["sync_bn"]:
            model = convert_sync_batchnorm(model)
        self.bare = model
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=opts["lr"], momentum=opts["momentum"], weight_decay=opts["weight_decay"]
        )
        self.scheduler = PolyLR(
            self.optimizer, opts["iterations"], opts["poly_power"], opts["min_lr"], opts["warmup"], opts["warmup_ratio"]
        )
        self.amp_dtype = AMP_DTYPES[opts["amp"]]
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a CUDA device; use bf16 or none on CPU")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        if ctx.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        use_compile = self.device.type == "cuda" if opts["compile"] == "auto" else bool(opts["compile"])
        self.model = torch.compile(model) if use_compile else model

        self.iteration = 0
        self.best_miou = -math.inf
        self.bad_streak = 0
        self.progress: ProgressBar | None = None  # the training progress line, while train() runs
        if resume is not None:
            self._restore(load_checkpoint(resume, map_location=self.device))

        self.train_set = build_dataset_from_config(self.config, "train")
        self.class_uniform = class_uniform_from_config(self.config)  # data.class_uniform
        self.val_set = build_dataset_from_config(self.config, "val") if data.get("val") else None
        if ctx.is_main and resume is not None:
            drop_records_after(self.output_dir / "log.jsonl", self.iteration)
        self.logger = RunLogger(self.output_dir, tensorboard=opts["tensorboard"]) if ctx.is_main else None
        if ctx.is_main:
            save_config(self.config, self.output_dir / "config.yaml")

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: model, config, resume state (every rank's RNG states, gathered)."""
        return {
            "model": self.bare.state_dict(),
            "config": self.config,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "best_mIoU": self.best_miou,
            "bad_streak": self.bad_streak,
            "rng": gather_objects(rng_state()),
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        if "optimizer" not in state:
            raise RuntimeError("the checkpoint holds no training state (it was written for evaluation only)")
        self.bare.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best_miou, self.bad_streak = state["iteration"], state["best_mIoU"], state["bad_streak"]
        states = state["rng"]
        if len(states) == self.context.world_size:
            set_rng_state(states[self.context.rank])
        else:  # another world size: the data order is still exact; dropout draws are reseeded per rank
            seed_everything(self.options["seed"] + self.context.rank + 1000 * self.iteration)

    def save(self, path: Path) -> bool:
        """Write the checkpoint atomically (main rank; every rank joins the RNG gather); returns whether it
        was written. Not during a non-finite streak, nor with NaN/Inf weights: then the previous file stays
        and a ``checkpoint_skipped`` record says why."""
        bad = nonfinite_tensors(self.bare.state_dict())
        if self.bad_streak or bad:
            reason = f"{len(bad)} non-finite model tensors" if bad else f"a non-finite streak of {self.bad_streak}"
            self._log({"checkpoint_skipped": 1, "nonfinite_tensors": len(bad)}, kind="nonfinite")
            if self.context.is_main:
                print(f"[iter {self.iteration}] not writing {path.name}: {reason}", flush=True)
            return False
        state = self.state_dict()
        if self.context.is_main:
            save_checkpoint(state, path)
        barrier()
        return True

    # ----------------------------------------------------------------------------------- loop
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], bool]:
        """Forward, backward and (if the loss is finite on every rank) an optimizer step.

        Returns the detached losses and whether the step was applied."""
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        buffers = [buffer.clone() for buffer in self.bare.buffers()]  # BatchNorm statistics before the forward
        with autocast:
            outputs = self.model(images)
            losses = self.bare.loss(outputs, labels)
        self.scaler.scale(losses["total"]).backward()
        finite = not any_true(~torch.isfinite(losses["total"].detach())).item()
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:  # a skipped step leaves the model as it was, buffers included
            with torch.no_grad():
                for buffer, before in zip(self.bare.buffers(), buffers):
                    buffer.copy_(before)
        self.optimizer.zero_grad(set_to_none=True)
        return {name: value.detach().float() for name, value in losses.items()}, finite

    def train(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``train.iterations`` (or stop early after iteration ``stop_at``, with a checkpoint, as an
        interrupted run would); returns the last evaluation's metrics (empty without a val split)."""
        opts, ctx = self.options, self.context
        stop_at = opts["iterations"] if stop_at is None else min(stop_at, opts["iterations"])
        loader = build_train_loader(
            self.train_set, opts["batch_size"], rank=ctx.rank, world_size=ctx.world_size, seed=opts["seed"],
            start_step=self.iteration, workers=opts["workers"], pin_memory=self.device.type == "cuda",
            class_uniform=self.class_uniform,
        )  # fmt: skip
        batches = iter(loader)
        # Drawn from the first iteration on, throttled by time; the loss shown is the last log interval's.
        self.progress = progress = ProgressBar(opts["iterations"], self.iteration) if ctx.is_main else None
        shown: dict[str, float] = {}
        sums: dict[str, torch.Tensor] = {}
        count, skipped = 0, 0
        metrics: dict[str, Any] = {}
        self.model.train()
        while self.iteration < stop_at:
            images, labels = next(batches)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            losses, applied = self.train_step(images, labels)
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            self.iteration += 1
            if applied:
                self.bad_streak = 0
                for name, value in losses.items():
                    sums[name] = sums[name] + value if name in sums else value
                count += 1
            else:
                self.bad_streak += 1
                skipped += 1
                self._log({"skipped_step": 1, "bad_streak": self.bad_streak}, kind="nonfinite")
                if self.bad_streak >= opts["max_bad_steps"]:
                    raise NonFiniteLossError(
                        f"the loss was NaN/Inf in {self.bad_streak} consecutive steps (up to iteration "
                        f"{self.iteration}); stopping. Lower train.lr, use train.amp=none or check the data."
                    )
            last = self.iteration == opts["iterations"]
            if self.iteration % opts["log_interval"] == 0 or last:
                scalars = {f"loss_{name}" if name != "total" else "loss": mean_over_ranks(value / count).item()
                           for name, value in sums.items()} if count else {}  # fmt: skip
                scalars.update(lr=lr, skipped=skipped)
                if opts["skip_bad"]:  # unreadable training samples so far (replaced by the next readable one)
                    scalars["bad_samples"] = getattr(self.train_set, "num_skipped", 0)
                self._log(scalars)
                shown = {"loss": scalars.get("loss", math.nan)}
                sums, count, skipped = {}, 0, 0
            if progress is not None:
                progress.update(self.iteration, {**shown, "lr": lr})
            checkpoint_due = last or self.iteration == stop_at or (
                opts["checkpoint_interval"] and self.iteration % opts["checkpoint_interval"] == 0
            )
            written = checkpoint_due and self.save(self.output_dir / LATEST_NAME)  # before evaluating: never lost
            if self.val_set is not None and (last or (opts["eval_interval"] and self.iteration % opts["eval_interval"] == 0)):
                best_before = self.best_miou
                metrics = self.evaluate()
                if written and self.best_miou != best_before:  # the resume state records the new best
                    self.save(self.output_dir / LATEST_NAME)
        if progress is not None:
            progress.close()
        self.progress = None
        if self.logger is not None:
            self.logger.flush()
        return metrics

    def close(self) -> None:
        """Close the log files (the main rank's)."""
        if self.logger is not None:
            self.logger.close()

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the model on the val split (each rank its shard), log it, keep the best checkpoint."""
        loader = build_eval_loader(
            self.val_set, self.options["eval_batch_size"], rank=self.context.rank, world_size=self.context.world_size,
            workers=min(self.options["workers"], 2),
        )  # fmt: skip
        start = time.perf_counter()
        names = list(getattr(self.val_set, "classes", None) or range(self.num_classes))
        progress = None
        if self.context.is_main:
            if self.progress is not None:
                self.progress.end_line()
            progress = ProgressBar(len(loader.sampler), label="val image", unit="img")
        metrics = evaluate(
            self.bare, loader, num_classes=self.num_classes, ignore_index=self.ignore_index, device=self.device,
            inference=self.config.get("evaluate"), class_names=names, progress=progress,
        )  # fmt: skip
        scalars = {key: metrics[key] for key in ("mIoU", "aAcc", "mAcc")}
        scalars["seconds"] = time.perf_counter() - start
        scalars.update({f"IoU/{name}": iou for name, iou in zip(names, metrics["IoU"])})
        if self.options["skip_bad"]:  # unreadable val samples so far (evaluated in place of the next readable one)
            scalars["bad_samples"] = getattr(self.val_set, "num_skipped", 0)
        self._log(scalars, kind="val")
        if progress is not None:
            progress.close()
            print(f"[iter {self.iteration}] val mIoU {100 * metrics['mIoU']:.2f}  aAcc {100 * metrics['aAcc']:.2f}"
                  f"  mAcc {100 * metrics['mAcc']:.2f}  worst IoU: {worst_classes(metrics['IoU'], names)}", flush=True)  # fmt: skip
        if metrics["mIoU"] > self.best_miou:
            self.best_miou = metrics["mIoU"]
            if self.context.is_main:
                save_checkpoint({"model": self.bare.state_dict(), "config": self.config, "iteration": self.iteration,
                                 "metrics": scalars}, self.output_dir / BEST_NAME)  # fmt: skip
        return metrics

    def _log(self, scalars: Mapping[str, Any], kind: str = "train") -> None:
        if self.logger is not None:
            self.logger.log(self.iteration, scalars, kind)

    def write_predictions(self) -> list[Path]:
        """Masks, overlays and ground truth of the first ``num_predictions`` val images, under
        ``predictions/`` (inference as in evaluation); returns the paths written."""
        count = min(self.options["num_predictions"], len(self.val_set) if self.val_set is not None else 0)
        if count == 0:
            return []
        data = self.config["data"]
        palette = dataset_palette(data["dataset"], self.num_classes)
        normalize = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **(data.get("normalize") or {})}
        options = inference_options(self.config.get("evaluate"))
        was_training = self.bare.training
        self.bare.eval()
        written = []
        with torch.no_grad():
            for index in range(count):
                image, label = self.val_set[index]
                logits = predict_logits(self.bare, image[None].to(self.device), self.num_classes, **options)
                written += save_predictions(
                    denormalize(image[None], normalize["mean"], normalize["std"]), logits.argmax(1).cpu(),
                    palette, self.output_dir / "predictions", names=[f"val_{index:04d}"], targets=label[None],
                    ignore_index=self.ignore_index,
                )  # fmt: skip
        self.bare.train(was_training)
        return written
