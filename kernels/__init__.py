"""Triton kernels of fastseg's fused ops (installed as ``fastseg.kernels``).

Each module holds the kernels of one op and the host functions that launch them. They run on
CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests them).
"""


def triton_release() -> tuple[int, int]:
    """(major, minor) of the installed Triton: what its compiler accepts and how it allocates registers differ
    between releases (kernels/deform_conv2d.py's FMA_K, tests/ops/test_triton_sm90_compile.py's spill allowances)."""
    import triton

    major, minor = (int(part) for part in triton.__version__.split(".")[:2])
    return major, minor
