"""Write bench/RESULTS.md from the pytest-benchmark result files bench/results/*.json.

Usage: ``python bench/report.py [--results bench/results] [--output bench/RESULTS.md]``

For every result file: where and with what it was measured (device, torch / triton / CUDA versions,
date, commit), then
  - per op group: median time of each implementation, the predicted time of the CUDA kernels on an
    H200 (the `// predicted H200 | group | ms | bound` lines of csrc/cuda/*.cu, shown for runs on an
    H200 beside the measured median), speed-up of the fused backends (cpu, cuda,
    triton) over the eager reference and over the best peer (the fastest non-fastseg implementation
    of the group: torch.compile of the reference, torchvision, F.grid_sample, Berman et al.'s loop),
    and the fraction of the floor: max(bytes / bandwidth, FLOPs / peak) over the measured time;
  - per model group: time, images/s and peak memory of the four variants, relative to reference eager.
A summary on top checks the issues' targets against every file of the matching device type.
Times are medians of the rounds (a loaded machine inflates the mean, rarely the median).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import sys

FUSED = ("cpu", "cuda", "triton")
# implementations that have no `implementation` parameter, by test function
NAMED_TESTS = {
    "test_deform_conv2d_torchvision": "torchvision",
    "test_lovasz_hinge_per_row_reference": "per-row reference",
}
# Datasheet figures: (bytes/s of memory bandwidth, fp32 FLOP/s without tensor cores, dense bf16
# tensor-core FLOP/s); the first name fragment found in the device name wins.
DATASHEETS = (
    ("H200", (4.8e12, 67e12, 989e12)),
    ("H100 PCIe", (2.0e12, 51e12, 756e12)),
    ("H100 NVL", (3.9e12, 60e12, 835e12)),
    ("H100", (3.35e12, 67e12, 989e12)),
    ("A100-SXM4-80GB", (2.039e12, 19.5e12, 312e12)),
    ("A100", (1.555e12, 19.5e12, 312e12)),
)
# (device type, group prefix, fused implementation, baseline implementation, speed-up target);
# OP_TARGETS: fused op vs its reference on one benchmark group; MODEL_TARGETS: a paper model's fused
# training step vs its reference one (bench_models.py).
OP_TARGETS = (
    ("cpu", "class_avg_pool cityscapes-C512", "cpu", "reference", 3.0),
    ("cpu", "gaussian_center_distance cityscapes-C32", "cpu", "reference", 3.0),
    ("cpu", "lovasz_hinge 97x97", "cpu", "per-row reference", 5.0),
    ("cpu", "deform_conv2d cpu-target-C256", "cpu", "reference", 1.5),
    ("cpu", "flow_warp decouple-104", "cpu", "reference", 1.5),
)
MODEL_TARGETS = (
    # (device type, model, backbone, speed-up of fused-compiled over reference eager, training step)
    ("cuda", "csfrnet_deeplabv3plus", "resnet50", 1.3),
    ("cuda", "decouple_deeplabv3plus", "resnet50", 1.3),
)
VARIANTS = ("reference", "fused", "fused-compiled", "reference-compiled")
KERNELS = pathlib.Path(__file__).resolve().parent.parent / "csrc" / "cuda"
TRITON_KERNELS = pathlib.Path(__file__).resolve().parent.parent / "kernels"
# A kernel file's prediction for one implementation of one benchmark group on an H200: `// predicted H200 |`
# lines in csrc/cuda/*.cu (the `cuda` implementation), `predicted H200 triton |` lines in kernels/*.py.
PREDICTION = re.compile(r"^(// |\s*)predicted H200(?P<triton> triton)? \| (?P<group>[^|]+?) \| (?P<ms>[0-9.]+) ms "
                        r"\| (?P<bound>.+)$")
FLOOR = re.compile(r"\(floor (?P<ms>[0-9.]+) ms\)")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A kernel file's predicted H200 time of one benchmark group: seconds, what bounds it, the floor."""

    seconds: float
    bound: str
    floor: float | None


@dataclasses.dataclass
class Run:
    """One result file: its metadata and benchmarks."""

    name: str
    device: str
    device_type: str
    versions: str
    date: str
    commit: str
    rates: tuple[float, float, float] | None
    rates_source: str
    benchmarks: list[dict]


def _implementation(bench: dict) -> str:
    params = bench.get("params") or {}
    if "implementation" in params:
        return params["implementation"]
    test = bench["name"].split("[")[0]
    return NAMED_TESTS.get(test, test)


def load_run(path: pathlib.Path) -> Run:
    data = json.loads(path.read_text())
    benchmarks = data["benchmarks"]
    extra = benchmarks[0]["extra_info"] if benchmarks else {}
    info = data.get("machine_info", {}).get("fastseg", {})
    device = info.get("device") or extra.get("device", "unknown device")
    device_type = "cpu" if device.startswith("cpu") else "cuda"
    commit = info.get("commit") or data.get("commit_info", {}).get("id", "unknown")[:7]
    if data.get("commit_info", {}).get("dirty"):
        commit += " (uncommitted changes)"
    torch_version = info.get("torch") or extra.get("torch", "?")
    versions = (f"torch {torch_version}, triton {info.get('triton') or 'not recorded'}, "
                f"CUDA {info.get('cuda') or ('none' if device_type == 'cpu' else 'not recorded')}, "
                f"Python {data.get('machine_info', {}).get('python_version', '?')}")
    rates, source = None, "none recorded: floor fractions n/a"
    for fragment, sheet in DATASHEETS:
        if fragment in device:
            rates, source = sheet, f"datasheet of {fragment}"
            break
    measured = info.get("measured")
    if rates is None and measured:
        rate = measured["fp32_matmul_flops_per_s"]
        rates = (measured["copy_bytes_per_s"], rate, rate)
        source = (f"measured in the run: copy {measured['copy_bytes_per_s'] / 1e9:.1f} GB/s, "
                  f"fp32 matmul {rate / 1e9:.0f} GFLOP/s")
    return Run(path.name, device, device_type, versions, info.get("date") or data.get("datetime", "?")[:16],
               commit, rates, source, benchmarks)


def _ms(seconds: float) -> str:
    """Milliseconds: two decimals below 100 ms, whole ones above."""
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _median(bench: dict) -> float:
    return bench["stats"]["median"]


def _groups(benchmarks: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for bench in benchmarks:
        groups.setdefault(bench["group"], []).append(bench)
    return groups


def floor_seconds(bench: dict, rates: tuple[float, float, float] | None) -> float | None:
    """max(bytes / bandwidth, FLOPs / peak) of an op benchmark, or None without rates or counts."""
    extra = bench["extra_info"]
    if rates is None or not extra.get("bytes"):
        return None
    bandwidth, fp32_peak, bf16_peak = rates
    peak = bf16_peak if " bf16 " in bench["group"] else fp32_peak
    return max(extra["bytes"] / bandwidth, extra.get("flops", 0) / peak)


def load_predictions(kernels: pathlib.Path = KERNELS,
                     triton_kernels: pathlib.Path = TRITON_KERNELS) -> dict[tuple[str, str], Prediction]:
    """(benchmark group, implementation) -> predicted time on an H200, from the kernel files."""
    predictions: dict[tuple[str, str], Prediction] = {}
    for path in sorted(kernels.glob("*.cu")) + sorted(triton_kernels.glob("*.py")):
        for line in path.read_text().splitlines():
            match = PREDICTION.match(line)
            if not match or (path.suffix == ".cu") == bool(match["triton"]):
                continue
            key = (match["group"], "triton" if match["triton"] else "cuda")
            if key in predictions:
                raise ValueError(f"{path.name}: a second prediction for {key[0]!r} ({key[1]})")
            floor = FLOOR.search(match["bound"])
            predictions[key] = Prediction(float(match["ms"]) / 1e3, match["bound"],
                                          float(floor["ms"]) / 1e3 if floor else None)
    return predictions


def prediction_table(predictions: dict[tuple[str, str], Prediction]) -> list[str]:
    """Every prediction with its floor: what the GPU run will be compared with."""
    lines = ["| group | implementation | predicted H200 (ms) | floor (ms) | predicted % of floor | bound |",
             "|---|---|---|---|---|---|"]
    for (group, name), p in sorted(predictions.items()):
        floor, share = ("-", "-") if p.floor is None else (f"{p.floor * 1e3:.3f}", f"{100 * p.floor / p.seconds:.0f}%")
        lines.append(f"| {group} | {name} | {p.seconds * 1e3:.3f} | {floor} | {share} | "
                     f"{FLOOR.sub('', p.bound).strip()} |")
    return lines


def _predicted(run: Run, group: str, name: str, predictions: dict[tuple[str, str], Prediction]) -> str:
    """The predicted time where it applies (a predicted implementation, run on an H200), else '-'."""
    prediction = predictions.get((group, name)) if "H200" in run.device else None
    return "-" if prediction is None else _ms(prediction.seconds)


def op_table(run: Run, predictions: dict[tuple[str, str], Prediction]) -> list[str]:
    lines = ["| group | implementation | median (ms) | predicted H200 (ms) | vs reference | vs best peer "
             "| % of floor |",
             "|---|---|---|---|---|---|---|"]
    for group, benches in sorted(_groups([b for b in run.benchmarks if not b["group"].startswith("model ")]).items()):
        times = {_implementation(b): _median(b) for b in benches}
        reference = times.get("reference")
        peers = {name: t for name, t in times.items() if name not in FUSED}
        best_peer = min(peers, key=peers.get) if peers else None
        for bench in benches:
            name, time = _implementation(bench), _median(bench)
            vs_ref = reference / time if reference and name != "reference" else None
            vs_peer = f"{peers[best_peer] / time:.2f}x ({best_peer})" if name in FUSED and best_peer else "-"
            floor = floor_seconds(bench, run.rates)
            fraction = f"{100 * floor / time:.1f}%" if floor else "n/a"
            lines.append(f"| {group} | {name} | {_ms(time)} | {_predicted(run, group, name, predictions)} | "
                         f"{_ratio(vs_ref)} | {vs_peer} | {fraction} |")
    return lines


def _model_groups(run: Run) -> dict[tuple, dict[str, dict]]:
    """(mode, model, backbone, batch, size) -> variant -> benchmark."""
    groups: dict[tuple, dict[str, dict]] = {}
    for bench in run.benchmarks:
        extra = bench["extra_info"]
        if bench["group"].startswith("model ") and "variant" in extra:
            key = (extra["mode"], extra["model"], extra["backbone"], extra["batch"], extra["size"])
            groups.setdefault(key, {})[extra["variant"]] = bench
    return groups


def model_table(run: Run) -> list[str]:
    lines = ["| step | model | backbone | batch x crop | variant | median (ms) | images/s | vs reference | "
             "peak memory (MiB) | memory vs reference | fastseg ops run (eager) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (mode, model, backbone, batch, size), variants in sorted(_model_groups(run).items()):
        reference = variants.get("reference")
        for variant in sorted(variants, key=VARIANTS.index):
            bench = variants[variant]
            extra = bench["extra_info"]
            time = _median(bench)
            relative = reference is not None and variant != "reference"
            vs_ref = _median(reference) / time if relative else None
            memory = extra["peak_bytes"] / 2**20
            vs_mem = f"{extra['peak_bytes'] / reference['extra_info']['peak_bytes']:.2f}" if relative else "-"
            fused_ops = extra.get("fused_ops")
            ran = "-" if fused_ops is None else (", ".join(fused_ops) or "none")
            lines.append(f"| {mode} | {model} | {backbone} | {batch} x {size}x{size} | {variant} | {_ms(time)} | "
                         f"{extra['images_per_s']:.2f} | {_ratio(vs_ref)} | {memory:.0f} | {vs_mem} | {ran} |")
    methods = {b["extra_info"]["memory_method"] for b in run.benchmarks if "memory_method" in b["extra_info"]}
    lines.append("")
    lines.append(f"Peak memory: {'; '.join(sorted(methods))}.")
    return lines


def target_rows(runs: list[Run]) -> list[str]:
    lines = ["| target | device | run | measured | target | met |", "|---|---|---|---|---|---|"]
    device_types = {run.device_type for run in runs}
    for device_type, prefix, fused, baseline, target in OP_TARGETS:
        for run in (r for r in runs if r.device_type == device_type):
            times = {(b["group"], _implementation(b)): _median(b) for b in run.benchmarks}
            for (group, name), time in times.items():
                if group.startswith(prefix) and name == fused and (group, baseline) in times:
                    speedup = times[group, baseline] / time
                    lines.append(f"| {group}: {fused} vs {baseline} | {run.device} | {run.name} | "
                                 f"{speedup:.2f}x | {target}x | {'yes' if speedup >= target else 'NO'} |")
    for device_type, model, backbone, target in MODEL_TARGETS:
        found = False
        for run in (r for r in runs if r.device_type == device_type):
            for (mode, name, bb, batch, size), variants in _model_groups(run).items():
                measured = {"reference", "fused-compiled"} <= set(variants)
                if (mode, name, bb) != ("train", model, backbone) or not measured:
                    continue
                found = True
                ref, fused = variants["reference"], variants["fused-compiled"]
                speedup = _median(ref) / _median(fused)
                memory_ok = fused["extra_info"]["peak_bytes"] <= ref["extra_info"]["peak_bytes"]
                lines.append(f"| train {model} {backbone} B={batch} {size}x{size}: fused-compiled vs reference, "
                             f"peak memory no higher | {run.device} | {run.name} | {speedup:.2f}x, memory "
                             f"{fused['extra_info']['peak_bytes'] / ref['extra_info']['peak_bytes']:.2f} | {target}x, "
                             f"<= 1.00 | {'yes' if speedup >= target and memory_ok else 'NO'} |")
        if not found:
            why = "GPU run pending" if device_type not in device_types else "not in the GPU results"
            lines.append(f"| train {model} {backbone}: fused-compiled vs reference, peak memory no higher | "
                         f"{device_type} | - | {why} | {target}x | - |")
    return lines


def render(runs: list[Run], predictions: dict[tuple[str, str], Prediction]) -> str:
    out = ["# Benchmark results", "",
           "Generated by `python bench/report.py` from `bench/results/*.json` (pytest-benchmark files); "
           "do not edit by hand. Times are medians of the timed rounds; speed-ups are ratios of medians.", ""]
    if not any(run.device_type == "cuda" for run in runs):
        out += ["**No GPU results yet**: every run below is on CPU; the GPU run (`bash bench/gpu_session.sh` on a "
                "lent GPU) is pending.", ""]
    out += ["## Targets", ""] + target_rows(runs) + [""]
    if predictions:
        out += ["## Predicted H200 times", "",
                "The cost models at the top of csrc/cuda/*.cu and kernels/*.py (`predicted H200` lines): an "
                "implementation's forward+backward at the GPU benchmark shapes, its floor max(bytes/bandwidth, FLOPs/peak) and what "
                "bounds the design. Predictions until an H200 run measures them (the `predicted H200` column of its "
                "op table).", ""] + prediction_table(predictions) + [""]
    out += ["## Runs", "", "| file | device | versions | date (UTC) | commit | floor from |",
            "|---|---|---|---|---|---|"]
    out += [f"| {r.name} | {r.device} | {r.versions} | {r.date} | {r.commit} | {r.rates_source} |" for r in runs]
    for run in runs:
        ops = [b for b in run.benchmarks if not b["group"].startswith("model ")]
        if ops:
            out += ["", f"## Ops: {run.name} ({run.device})", "",
                    "Forward+backward of each op. `vs best peer`: the fastest of the non-fastseg implementations "
                    "in the group. `predicted H200`: the implementation's predicted time (cost model at the top of "
                    "its kernel file), for runs on an H200. `% of floor`: max(bytes/bandwidth, FLOPs/peak) / "
                    "median time.",
                    ""]
            out += op_table(run, predictions)
        if _model_groups(run):
            out += ["", f"## Models: {run.name} ({run.device})", "",
                    "`train`: zero_grad + forward + loss + backward + SGD step; `infer`: eval forward under "
                    "no_grad. `vs reference`: speed-up over the reference ops in eager mode.", ""]
            out += model_table(run)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = pathlib.Path(__file__).resolve().parent
    parser.add_argument("--results", type=pathlib.Path, default=here / "results")
    parser.add_argument("--output", type=pathlib.Path, default=here / "RESULTS.md")
    args = parser.parse_args(argv)
    # pytest-benchmark files only (default-run.json, bench/default_run.py's result, is rendered into the README)
    paths = [path for path in sorted(args.results.glob("*.json")) if "benchmarks" in json.loads(path.read_text())]
    if not paths:
        print(f"no pytest-benchmark result files in {args.results}", file=sys.stderr)
        return 1
    runs = [load_run(path) for path in paths]
    args.output.write_text(render(runs, load_predictions()))
    print(f"wrote {args.output} from {len(runs)} result file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
