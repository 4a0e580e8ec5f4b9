"""The model zoo: dilated ResNet backbones, segmentation heads, baselines and the paper models.

``build_model(name, num_classes, backbone="resnet50", **options)`` builds a registered model;
``list_models()`` names them; ``model_info(name)`` gives an entry's metadata (paper, fused ops,
benchmark crop, tiny test options); ``summary(model, input_size)`` prints parameters and FLOPs per module;
``load_pretrained(model, checkpoint)`` loads torchvision / timm / mmsegmentation ResNet weights.

Baselines: ``fcn``, ``pspnet``, ``deeplabv3``, ``deeplabv3plus``, ``nonlocal``. Paper models: ``acfnet``
(ACFNet), ``decouple_fcn``, ``decouple_pspnet``, ``decouple_deeplabv3plus`` (DecoupleSegNet),
``csfrnet_fcn``, ``csfrnet_pspnet``, ``csfrnet_nonlocal``, ``csfrnet_deeplabv3plus`` (CSFRNet), ``fenet`` (FENet).
"""
import importlib
import pkgutil

from fastseg.models.backbones import ResNet, build_backbone, load_pretrained
from fastseg.models.batchnorm import convert_sync_batchnorm
from fastseg.models.registry import ModelInfo, build_model, list_models, model_info, register_model
from fastseg.models.segmentor import EncoderDecoder
from fastseg.models.summary import summary

# Import every module of the package: a module's @register_model builders register the baselines and
# the paper models, so a new paper model is one file here (docs/models.md), with no import to add.
for _module in pkgutil.iter_modules(__path__):
    if not _module.ispkg:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "EncoderDecoder",
    "ModelInfo",
    "ResNet",
    "build_backbone",
    "build_model",
    "convert_sync_batchnorm",
    "list_models",
    "load_pretrained",
    "model_info",
    "register_model",
    "summary",
]
