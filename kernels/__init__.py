"""Triton kernels of fastseg's fused ops (installed as ``fastseg.kernels``).

Each module holds the kernels of one op and the host functions that launch them. They run on
CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests them).
"""
