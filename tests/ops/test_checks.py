"""fastseg.ops.checks.check_labels: a ValueError naming the bad label on the CPU; on a GPU a
device-side assertion that does not stall the host."""
from __future__ import annotations

import pytest
import torch

from fastseg.ops.checks import check_labels


def test_cpu_bad_label_is_a_value_error_naming_it():
    labels = torch.randint(0, 5, (2, 4, 6))
    check_labels(labels, 5, 255)
    labels[1, 2, 3] = 255  # ignored: fine
    check_labels(labels, 5, 255)
    labels[0, 0, 1] = 7
    with pytest.raises(ValueError, match="labels holds 7, outside \\[0, 5\\) and not ignore_index=255"):
        check_labels(labels, 5, 255)


@pytest.mark.cuda
def test_cuda_check_does_not_synchronise():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    labels = torch.randint(0, 5, (2, 64, 64), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside raises
    try:
        check_labels(labels, 5, 255)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()  # a valid batch passes the device-side assertion
