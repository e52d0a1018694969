"""Facts every room shares: label encodings, image statistics, class counts of the datasets."""

from __future__ import annotations

from types import MappingProxyType

#: Label of pixels that no loss or metric counts (void in NYUD_MT, -1 in MTAN).
IGNORE_INDEX = 255

#: ImageNet channel statistics (``image_normalization: imagenet``, for pretrained backbones).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Segmentation classes of each dataset layout.
NYUD_NUM_CLASSES = 40
MTAN_NUM_CLASSES = 13
CELEBA_NUM_CLASSES = 3
NUM_CLASSES = MappingProxyType({"nyud": NYUD_NUM_CLASSES, "mtan": MTAN_NUM_CLASSES, "celeba": CELEBA_NUM_CLASSES})
