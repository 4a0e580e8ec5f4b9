"""fastseg: semantic segmentation on fused C++/CUDA/Triton kernels."""
import os
import sys

# A fastseg command (python -m fastseg.train / evaluate / predict, also under torchrun) sets, before
# torch loads OpenMP, that waiting OpenMP threads sleep instead of spinning: on a shared 2-core machine
# spinning threads burned 4x the CPU time and made steps 4-8x slower (README, Training: CPU threads).
# Only when unset, only for fastseg's own commands, and only if torch is not loaded yet.
_argv = getattr(sys, "orig_argv", [])
if "torch" not in sys.modules and "-m" in _argv[:-1] and _argv[_argv.index("-m") + 1].partition(".")[0] == "fastseg":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fastseg import ops  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
