"""DDP on CPU (gloo): 2 spawned ranks match one process with the same global batch; a failing rank
makes the other exit with an error instead of hanging."""
from __future__ import annotations

import multiprocessing
import os
import socket
import time

import torch
import torch.distributed as dist

from fastseg.engine.builders import build_model_from_config
from fastseg.engine.checkpoint import LATEST_NAME, load_checkpoint
from fastseg.engine.distributed import init_distributed, shutdown_distributed
from fastseg.engine.logging import read_log
from fastseg.engine.trainer import Trainer, seed_everything, train_options
from fastseg.models.batchnorm import CPUSyncBatchNorm

STEPS = 2
TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, config: dict, output_dir: str, fail_rank: int) -> None:
    """One torchrun-like rank: the environment torchrun would set, then the trainer."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")  # fmt: skip
    torch.set_num_threads(1)
    context = init_distributed("cpu", timeout_s=TIMEOUT_S)
    trainer = Trainer(config, output_dir, context)
    assert any(isinstance(m, CPUSyncBatchNorm) for m in trainer.bare.modules()) and dist.get_backend() == "gloo"
    if rank == fail_rank:
        def failing_step(images, labels):
            raise RuntimeError(f"rank {rank} fails on purpose")

        trainer.train_step = failing_step
    trainer.train()
    trainer.close()
    shutdown_distributed()


def _single_main(config: dict, output_dir: str) -> None:
    """The one-process run, in a fresh process like the ranks: the parent's CPU math state depends on the
    tests that ran before (after fp16/bf16 work oneDNN's float32 conv rounds differently, which train-mode
    BatchNorm on this tiny net amplifies past the tolerance), and is not what this test compares."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    Trainer(config, output_dir).train()


def _initial_state(config: dict) -> dict:
    """The initial weights of ``config``'s model (same seed as the runs)."""
    seed_everything(train_options(config)["seed"])
    return build_model_from_config(config).state_dict()


def _spawn(world_size: int, config: dict, output_dir, fail_rank: int = -1) -> list[multiprocessing.Process]:
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    processes = [context.Process(target=_rank_main, args=(rank, world_size, port, config, str(output_dir), fail_rank))
                 for rank in range(world_size)]  # fmt: skip
    for process in processes:
        process.start()
    return processes


def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path, make_tiny_config):
    # No ignored pixels (crops never need padding), so the mean of per-rank mean losses is the global mean.
    config = make_tiny_config(f"train.iterations={STEPS}", "train.batch_size=4", "data.augment.scale=[0.75,1.25]", "data.val=null")
    single_process = multiprocessing.get_context("spawn").Process(target=_single_main,
                                                                   args=(config, str(tmp_path / "single")))
    single_process.start()
    single_process.join(timeout=120)
    assert single_process.exitcode == 0
    processes = _spawn(2, config, tmp_path / "ddp")
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0]

    single, ddp = load_checkpoint(tmp_path / "single" / LATEST_NAME), load_checkpoint(tmp_path / "ddp" / LATEST_NAME)
    assert ddp["config"]["run"] == {"world_size": 2, "batch_per_rank": 2}
    assert len(ddp["rng"]) == 2
    for name, value in single["model"].items():
        # BN running statistics and weights agree up to the reduction order of the sums.
        torch.testing.assert_close(ddp["model"][name].float(), value.float(), rtol=1e-4, atol=2e-5, msg=name)
    moved = [name for name, value in single["model"].items() if name.endswith("weight")
             and not torch.equal(value, _initial_state(config)[name])]  # fmt: skip
    assert len(moved) > 10
    single_log = read_log(tmp_path / "single" / "log.jsonl", "train")
    ddp_log = read_log(tmp_path / "ddp" / "log.jsonl", "train")
    assert [r["iter"] for r in ddp_log] == list(range(1, STEPS + 1))
    for a, b in zip(single_log, ddp_log):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * a["loss"]


def test_a_failing_rank_makes_the_other_exit(tmp_path, make_tiny_config):
    config = make_tiny_config("train.iterations=50", "train.batch_size=2", "data.val=null")
    start = time.monotonic()
    processes = _spawn(2, config, tmp_path, fail_rank=1)
    for process in processes:
        process.join(timeout=TIMEOUT_S + 60)
    alive = [p.is_alive() for p in processes]
    for process in processes:
        if process.is_alive():
            process.kill()
    assert alive == [False, False], f"a rank still runs {time.monotonic() - start:.0f} s after rank 1 failed"
    assert processes[1].exitcode != 0 and processes[0].exitcode != 0
    assert time.monotonic() - start < TIMEOUT_S + 60
    assert not (tmp_path / LATEST_NAME).exists()  # rank 0 did not carry on to the end
