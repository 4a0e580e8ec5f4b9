"""Data: datasets (real on-disk formats and built-in synthetic street scenes), joint transforms, sampling."""
from fastseg.data import transforms
from fastseg.data.class_uniform_sampler import ClassUniformSampler, class_presence
from fastseg.data.datasets import DATASET_NAMES, BadSampleError, SegmentationDataset, build_dataset
from fastseg.data.synthetic import SyntheticStreetScenes

__all__ = [
    "BadSampleError", "ClassUniformSampler", "DATASET_NAMES", "SegmentationDataset", "SyntheticStreetScenes",
    "build_dataset", "class_presence", "transforms",
]  # fmt: skip
