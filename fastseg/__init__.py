"""fastseg: semantic segmentation on fused C++/CUDA/Triton kernels."""
from fastseg import ops

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
