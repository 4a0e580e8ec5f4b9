"""bench/report.py: speed-ups, floor fractions, targets and model tables from pytest-benchmark files."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import report  # noqa: E402


def _bench(group: str, implementation: str | None, median: float, name: str = "test_op", **extra) -> dict:
    params = {"implementation": implementation} if implementation else {}
    return {"group": group, "name": f"{name}[x]", "params": params, "extra_info": extra,
            "stats": {"median": median, "min": median}}


def _write(path: Path, device: str, benchmarks: list[dict], measured: dict | None = None) -> Path:
    info = {"device": device, "torch": "2.13.0", "triton": "3.9.0",
            "cuda": None if device.startswith("cpu") else "12.8", "date": "2026-11-21T20:00", "commit": "abc1234"}
    if measured:
        info["measured"] = measured
    data = {"machine_info": {"python_version": "3.11.7", "fastseg": info},
            "commit_info": {"id": "abc1234def", "dirty": False}, "datetime": "2026-11-21T20:00:00",
            "benchmarks": benchmarks}
    path.write_text(json.dumps(data))
    return path


def test_op_speedups_and_floor_fraction(tmp_path):
    rng = random.Random(7)
    reference, compiled, fused = (rng.uniform(0.01, 0.1) for _ in range(3))
    group = "flow_warp decouple-104 fp32 B=2 fwd+bwd"
    byte_count, flop_count = rng.randint(10**7, 10**8), rng.randint(10**8, 10**9)
    measured = {"copy_bytes_per_s": 1e10, "fp32_matmul_flops_per_s": 1e11}
    path = _write(tmp_path / "cpu.json", "cpu x2 threads", [
        _bench(group, "reference", reference, bytes=byte_count, flops=flop_count),
        _bench(group, "reference-compiled", compiled, bytes=byte_count, flops=flop_count),
        _bench(group, "cpu", fused, bytes=byte_count, flops=flop_count),
    ], measured)
    run = report.load_run(path)
    rows = [line for line in report.op_table(run, {}) if line.startswith(f"| {group} | cpu ")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].split("|")[1:-1]]
    assert cells[3] == "-"  # no prediction off an H200
    assert cells[4] == f"{reference / fused:.2f}x"
    best = "reference" if reference < compiled else "reference-compiled"
    assert cells[5] == f"{min(reference, compiled) / fused:.2f}x ({best})"
    floor = max(byte_count / 1e10, flop_count / 1e11)
    assert cells[6] == f"{100 * floor / fused:.1f}%"


def test_predicted_column_from_kernel_files_for_cuda_on_h200(tmp_path):
    rng = random.Random(11)
    group, other = "flow_warp decouple-104 fp32 B=8 fwd+bwd", "lovasz_hinge 97x97 N=152 fwd+bwd"
    predicted, measured = rng.uniform(0.05, 5.0), rng.uniform(0.05, 5.0)
    kernels = tmp_path / "cuda"
    kernels.mkdir()
    prediction = f"// predicted H200 | {group} | {predicted:.3f} ms | atomics (floor 0.093 ms)"
    (kernels / "flow_warp.cu").write_text(f"// design prose\n{prediction}\n#include <x>\n")
    triton = tmp_path / "kernels"
    triton.mkdir()
    (triton / "flow_warp.py").write_text(f'"""Cost model.\n  predicted H200 triton | {group} | 0.500 ms | memory\n"""\n')
    predictions = report.load_predictions(kernels, triton)
    assert set(predictions) == {(group, "cuda"), (group, "triton")}
    cuda = predictions[group, "cuda"]
    assert cuda.seconds == pytest.approx(round(predicted, 3) / 1e3)
    assert cuda.floor == pytest.approx(0.093e-3) and cuda.bound.startswith("atomics")
    assert predictions[group, "triton"].seconds == pytest.approx(0.5e-3) and predictions[group, "triton"].floor is None
    share = f"{100 * 0.093 / round(predicted, 3):.0f}%"
    text = report.render([], predictions)
    assert f"| {group} | cuda | {round(predicted, 3):.3f} | 0.093 | {share} | atomics |" in text
    assert f"| {group} | triton | 0.500 | - | - | memory |" in text
    benches = [_bench(group, "cuda", measured / 1e3), _bench(group, "reference", 2 * measured / 1e3),
               _bench(other, "cuda", measured / 1e3)]
    for device, shown in (("NVIDIA H200", True), ("NVIDIA H100 80GB HBM3", False)):
        run = report.load_run(_write(tmp_path / "gpu.json", device, benches))
        rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")[4].strip()
                for line in report.op_table(run, predictions)[2:]}
        assert rows[group, "cuda"] == (report._ms(round(predicted, 3) / 1e3) if shown else "-")
        assert rows[group, "reference"] == "-" and rows[other, "cuda"] == "-"
    (kernels / "copy.cu").write_text(f"// predicted H200 | {group} | 1.000 ms | memory\n")
    with pytest.raises(ValueError, match="second prediction"):
        report.load_predictions(kernels, triton)


def test_every_cuda_kernel_file_predicts_its_gpu_benchmark_groups():
    predictions = report.load_predictions()
    for path in sorted(report.KERNELS.glob("*.cu")):
        groups = [line for line in path.read_text().splitlines() if report.PREDICTION.match(line)]
        assert groups, f"{path.name} has no `// predicted H200` line"
    assert all(group.endswith("fwd+bwd") and ("B=8" in group or "lovasz" in group) for group, _ in predictions)
    assert all(0 < p.seconds < 1 and p.floor is not None and 0 < p.floor <= p.seconds for p in predictions.values())
    # the lovász groups of bench/bench_lovasz_hinge.py at its GPU shapes
    assert {("lovasz_hinge 97x97 N=152 fwd+bwd", "cuda"), ("lovasz_hinge 769x769 N=38 fwd+bwd", "cuda")} <= set(predictions)
    assert ("deform_conv2d csfrnet-C512 bf16 B=8 97x97 fwd+bwd", "triton") in predictions


def test_datasheet_rates_win_over_measured_ones_on_known_gpus(tmp_path):
    path = _write(tmp_path / "gpu.json", "NVIDIA H100 80GB HBM3", [],
                  {"copy_bytes_per_s": 1.0, "fp32_matmul_flops_per_s": 1.0})
    run = report.load_run(path)
    assert run.rates == (3.35e12, 67e12, 989e12) and run.device_type == "cuda"
    bf16 = _bench("deform_conv2d csfrnet-C512 bf16 B=8 97x97 fwd+bwd", "cuda", 1.0, bytes=1, flops=989e12)
    assert report.floor_seconds(bf16, run.rates) == pytest.approx(1.0)


def test_targets_met_missed_and_gpu_pending(tmp_path):
    group = "class_avg_pool cityscapes-C512 B=2 fwd+bwd"
    lovasz = "lovasz_hinge 97x97 N=38 fwd+bwd"
    path = _write(tmp_path / "cpu.json", "cpu x2 threads", [
        _bench(group, "reference", 0.050), _bench(group, "cpu", 0.020),  # 2.5x < 3x
        _bench(lovasz, "cpu", 0.004), _bench(lovasz, None, 0.040, name="test_lovasz_hinge_per_row_reference"),
    ])
    text = report.render([report.load_run(path)], {})
    assert f"| {group}: cpu vs reference | cpu x2 threads | cpu.json | 2.50x | 3.0x | NO |" in text
    assert f"| {lovasz}: cpu vs per-row reference | cpu x2 threads | cpu.json | 10.00x | 5.0x | yes |" in text
    assert "GPU run pending" in text and "No GPU results yet" in text


def _model(mode, model, variant, median, peak, backbone="resnet50", batch=8, size=769, fused_ops=None):
    return _bench(f"model {mode} {model} {backbone} B={batch} {size}x{size}", None, median, name="test_model",
                  mode=mode, model=model, backbone=backbone, variant=variant, batch=batch, size=size,
                  images_per_s=batch / median, peak_bytes=peak, memory_method="torch.cuda.max_memory_allocated",
                  fused_ops=fused_ops)


def test_model_table_and_model_targets(tmp_path):
    path = _write(tmp_path / "gpu.json", "NVIDIA H100 80GB HBM3", [
        _model("train", "csfrnet_deeplabv3plus", "reference", 0.80, 40 * 2**30, fused_ops=[]),
        _model("train", "csfrnet_deeplabv3plus", "fused", 0.64, 32 * 2**30,
               fused_ops=["class_avg_pool", "lovasz_hinge"]),
        _model("train", "csfrnet_deeplabv3plus", "fused-compiled", 0.50, 30 * 2**30),  # 1.6x, less memory
        _model("train", "decouple_deeplabv3plus", "reference", 0.60, 20 * 2**30, size=832),
        _model("train", "decouple_deeplabv3plus", "fused-compiled", 0.40, 21 * 2**30, size=832),  # memory higher
    ])
    run = report.load_run(path)
    table = "\n".join(report.model_table(run))
    prefix = "| train | csfrnet_deeplabv3plus | resnet50 | 8 x 769x769 "
    assert prefix + "| fused-compiled | 500 | 16.00 | 1.60x | 30720 | 0.75 | - |" in table
    targets = "\n".join(report.target_rows([run]))
    assert "| reference | 800 | 10.00 | - | 40960 | - | none |" in table
    assert "| fused | 640 | 12.50 | 1.25x | 32768 | 0.80 | class_avg_pool, lovasz_hinge |" in table
    assert "1.60x, memory 0.75 | 1.3x, <= 1.00 | yes |" in targets
    assert "1.50x, memory 1.05 | 1.3x, <= 1.00 | NO |" in targets
    assert "GPU run pending" not in targets


def test_main_writes_the_report(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    _write(results / "a.json", "cpu x2 threads", [_bench("g", "reference", 0.01), _bench("g", "cpu", 0.005)])
    _write(results / "b.json", "NVIDIA H100 80GB HBM3", [])  # a GPU stage whose cases were all skipped
    (results / "default-run.json").write_text('{"iterations": 600}')  # not a pytest-benchmark file
    output = tmp_path / "RESULTS.md"
    assert report.main(["--results", str(results), "--output", str(output)]) == 0
    text = output.read_text()
    assert "default-run.json" not in text and "## Predicted H200 times" in text
    assert "| g | cpu | 5.00 | - | 2.00x | 2.00x (reference) | n/a |" in text
    assert "| b.json | NVIDIA H100 80GB HBM3 |" in text and "No GPU results yet" not in text
    assert report.main(["--results", str(tmp_path / "empty"), "--output", str(output)]) == 1
