#!/usr/bin/env bash
# A lent GPU machine's session (device tool), in two calls of under 10 minutes each:
#   1st call: `bash bench/gpu_session.sh`        build, then the benchmarks in order of importance:
#      model-targets: the training step of CSFRNet and DecoupleSegNet on ResNet-50, batch 8 at 769 /
#                     832 crops, all four variants (the 1.3x targets);
#      ops:           every op benchmark (fused backends, reference, torchvision / grid_sample peers);
#      models:        the other model cases (ACFNet, FENet, inference, ResNet-101, DeepLabv3+).
#   2nd call: `bash bench/gpu_session.sh tests`   build, then every CUDA-marked test (CUDA and Triton
#      backends on CUDA tensors), under its own deadline.
# Any list of stage names runs just those. FASTSEG_BENCH_DEADLINE makes every benchmark case that
# could not end within BENCH_BUDGET_S (480 s from the start, the build included) skip itself with the
# reason printed, so the script ends in time with the most important cases measured; the tests stage
# is cut at the same deadline. RESULTS.md is written on every exit, a cut-short or failed one too.
# At most 6 files (the device tool returns 8): build.log, session.log (versions, every stage's output),
# the pytest-benchmark JSON files (device, torch / triton / CUDA versions, date and commit in
# their machine_info) and RESULTS.md land in $OUT (bench/results/ when unset): commit the JSON files
# to bench/results/ and RESULTS.md to bench/.
set -uo pipefail
start=$(date +%s)
out=${OUT:-bench/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export FASTSEG_BENCH_DEADLINE=$((start + ${BENCH_BUDGET_S:-480}))
stamp() { echo "== $1 after $(($(date +%s) - start)) s"; }
stages=${*:-model-targets ops models}
wants() { [[ " $stages " == *" $1 "* ]]; }

# PyTorch's build helpers compile .cu files with -D__CUDA_NO_HALF_CONVERSIONS__ and friends, and guess
# CUDA_HOME from the nvcc on PATH; setup.py finds the toolkit itself, but an explicit CUDA_HOME is
# the user's way and is echoed in the log.
if [ -z "${CUDA_HOME:-}" ]; then
  for home in /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /none/bin/nvcc)")")")"; do
    if [ -f "$home/include/cuda_runtime.h" ]; then export CUDA_HOME=$home; break; fi
  done
fi
echo "CUDA_HOME=${CUDA_HOME:-unset}"
# what the build runs with: pyproject's PEP 639 license string needs setuptools >= 77 (PyTorch 2.11 pins < 82)
python3 -c 'import setuptools, torch; print("setuptools", setuptools.__version__, "torch", torch.__version__)'

stamp build
# FASTSEG_CUDA=1: a build without the CUDA kernels is a failure here, not a silent CPU-only build.
if ! FASTSEG_CUDA=1 python3 -m pip install --no-build-isolation --no-deps -v -e . >"$out/build.log" 2>&1; then
  echo "BUILD FAILED; first compiler error:"
  grep -m 1 -B 2 -A 8 -E "error:|error [A-Z]|Error " "$out/build.log"
  echo "...; last lines:"
  tail -n 20 "$out/build.log"
  exit 1
fi
python3 - <<'PY' | tee -a "$out/session.log"
import datetime, subprocess, torch, triton, fastseg
print("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"))
print("commit", subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip())
print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
print("build", fastseg.ops.build_info())
PY
prefix="$out/$(date -u +%F)-$(python3 -c 'import torch; print(torch.cuda.get_device_name().split()[1].lower())')"

report() {  # on every exit: whatever was measured goes into RESULTS.md
  stamp report
  if [ "$(realpath "$out")" != "$(realpath bench/results)" ]; then
    cp "$prefix"-*.json bench/results/ 2>/dev/null
  fi
  python3 bench/report.py --output "$out/RESULTS.md"
  stamp done
}
trap report EXIT

if wants tests; then
  stamp "CUDA tests"
  timeout --signal=INT $((FASTSEG_BENCH_DEADLINE - $(date +%s))) \
    python3 -m pytest tests -q -m cuda -p no:cacheprovider -rfE 2>&1 | tee -a "$out/session.log" | tail -n 30
fi

targets="bench_models.py and train and resnet50 and (csfrnet_deeplabv3plus or decouple_deeplabv3plus)"
bench() {  # bench NAME PYTEST-ARGS...: one pytest-benchmark run into $prefix-NAME.json
  local name=$1
  shift
  stamp "benchmarks: $name"
  python3 -m pytest bench --benchmark-only -p no:cacheprovider -rs --benchmark-json "$prefix-$name.json" "$@" 2>&1 \
    | tee -a "$out/session.log" | tail -n 40
}
wants model-targets && bench model-targets -k "$targets"
wants ops && bench ops -k "not bench_models.py"
wants models && bench models -k "bench_models.py and not ($targets)"

