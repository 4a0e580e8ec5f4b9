#!/usr/bin/env bash
# One run on a lent GPU machine (device tool: `bash bench/gpu_session.sh`): build fastseg with its
# CUDA kernels, run every CUDA-marked test (CUDA and Triton backends on CUDA tensors), then all
# benchmarks. Logs and the pytest-benchmark JSON land in $OUT (bench/results/ when unset); commit
# them to bench/results/ with the device and versions recorded in versions.txt.
set -uo pipefail
out=${OUT:-bench/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
python3 -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1 || { tail -n 40 "$out/build.log"; exit 1; }
python3 - <<'PY' | tee "$out/versions.txt"
import datetime, subprocess, torch, triton, fastseg
print("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"))
print("commit", subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip())
print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
print("build", fastseg.ops.build_info())
PY
python3 -m pytest tests -q -m cuda -p no:cacheprovider 2>&1 | tee "$out/tests-cuda.log" | tail -n 30
python3 -m pytest bench --benchmark-only -p no:cacheprovider --benchmark-json "$out/gpu.json" 2>&1 | tee "$out/bench.log" | tail -n 60
