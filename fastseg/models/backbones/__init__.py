"""Backbones: dilated ResNets returning C1..C4, and ImageNet checkpoint loading."""
from fastseg.models.backbones.pretrained import LoadReport, load_pretrained
from fastseg.models.backbones.resnet import BasicBlock, Bottleneck, ResNet, build_backbone

__all__ = ["BasicBlock", "Bottleneck", "LoadReport", "ResNet", "build_backbone", "load_pretrained"]
