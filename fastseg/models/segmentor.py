"""EncoderDecoder: backbone -> decode head (+ auxiliary head), with the training loss; the one way a
paper model is built on a baseline (:meth:`EncoderDecoder.from_baseline`, :func:`build_on_baseline`)."""
from __future__ import annotations

import inspect
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from fastseg.models.heads.base import DecodeHead
from fastseg.models.layers import resize


class EncoderDecoder(nn.Module):
    """A segmentor made of a backbone returning (C1..C4), a decode head and an optional auxiliary head.

    ``forward(images)`` with images (B, 3, H, W):
      - training mode: ``{"out": logits, "aux": aux_logits}`` (``"aux"`` only with an auxiliary head),
        each at its head's feature resolution (stride = the backbone's output stride, 4 for
        DeepLabv3+); :meth:`loss` upsamples them to the labels' size (the mmsegmentation way: the
        big upsampled tensor lives only inside the loss).
      - eval mode: the final logits (B, num_classes, H, W), bilinearly upsampled to the input size.

    ``loss(outputs, targets)`` with targets (B, H, W) int64 (``ignore_index`` = unlabelled) returns
    ``{"out": CE, "aux": aux_weight * CE, "total": sum}``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: DecodeHead,
        auxiliary_head: DecodeHead | None = None,
        aux_weight: float = 0.4,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.num_classes = decode_head.num_classes

    @classmethod
    def from_baseline(cls, baseline: EncoderDecoder, **options):
        """``cls`` on a built baseline's backbone, decode head, auxiliary head, aux_weight and ignore_index
        (modules shared); ``options``: the other arguments of ``cls.__init__``."""
        return cls(
            baseline.backbone, baseline.decode_head, baseline.auxiliary_head,
            aux_weight=baseline.aux_weight, ignore_index=baseline.ignore_index, **options,
        )

    @classmethod
    def own_options(cls) -> tuple[str, ...]:
        """The ``__init__`` arguments of ``cls`` beyond EncoderDecoder's: what :meth:`from_baseline` takes."""
        shared = inspect.signature(EncoderDecoder.__init__).parameters
        return tuple(name for name in inspect.signature(cls.__init__).parameters if name not in shared)

    def forward(self, images: Tensor) -> dict[str, Tensor] | Tensor:
        features = self.backbone(images)
        out = self.decode_head(features)
        if not self.training:
            return resize(out, images.shape[-2:])
        outputs = {"out": out}
        if self.auxiliary_head is not None:
            outputs["aux"] = self.auxiliary_head(features)
        return outputs

    def cross_entropy(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean pixel CE of logits (B, K, h, w) upsampled to targets (B, H, W), ignoring ``ignore_index``."""
        return F.cross_entropy(resize(logits, targets.shape[-2:]), targets, ignore_index=self.ignore_index)

    def loss(self, outputs: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        losses = {"out": self.cross_entropy(outputs["out"], targets)}
        if "aux" in outputs:
            losses["aux"] = self.aux_weight * self.cross_entropy(outputs["aux"], targets)
        losses["total"] = sum(losses.values())
        return losses


def build_on_baseline(
    cls: type[EncoderDecoder], baseline: Callable[..., EncoderDecoder], num_classes: int, backbone: str, **options
) -> EncoderDecoder:
    """The paper-model builder: ``cls.from_baseline(baseline(num_classes, backbone, **rest), **own)``.

    ``own``: the ``options`` named in ``cls.own_options()`` (the paper module's and its losses'); ``rest``:
    the others (the backbone's, the heads', aux_weight, ignore_index; see :mod:`fastseg.models.baselines`).
    ``baseline`` is a registered baseline builder or ``partial(encoder_decoder, make_head)`` for a new head.
    """
    own = {key: options.pop(key) for key in cls.own_options() if key in options}
    return cls.from_baseline(baseline(num_classes, backbone, **options), **own)
