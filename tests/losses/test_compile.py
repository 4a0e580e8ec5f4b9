"""The pixel losses with data-dependent selection or weights trace into one torch.compile graph:
no graph break, no host sync (forward; their backward is plain PyTorch autograd, checked in eager
by each loss's tests)."""
from __future__ import annotations

import torch

from fastseg.losses import (
    BoundaryOhemCrossEntropyLoss,
    CrossEntropyLoss,
    EdgeBCELoss,
    OhemCrossEntropyLoss,
)


def _selection_losses(logits, edge_logits, labels):
    return torch.stack(
        [
            CrossEntropyLoss(class_balanced=True)(logits, labels),
            OhemCrossEntropyLoss(thresh=0.7, min_kept=40)(logits, labels),
            EdgeBCELoss()(edge_logits, labels),
            BoundaryOhemCrossEntropyLoss(edge_thresh=0.5)(logits, edge_logits, labels),
        ]
    )


def test_selection_losses_compile_fullgraph():
    labels = torch.randint(0, 4, (2, 3, 4)).repeat_interleave(4, 1).repeat_interleave(4, 2)
    labels[torch.rand(labels.shape) < 0.1] = 255
    logits = torch.randn(2, 4, 6, 8)
    edge_logits = torch.randn(2, 1, 6, 8)
    compiled = torch.compile(_selection_losses, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(logits, edge_logits, labels), _selection_losses(logits, edge_logits, labels))
