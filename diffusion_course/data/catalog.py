"""The datasets the course knows: their names, sizes, classes, and which may be mirrored.

This is the one place dataset names are spelled out. The loader
(:func:`~diffusion_course.data.load_dataset`), both command lines (``python -m
diffusion_course.data prepare`` and ``diffusion-course-train --dataset``) and the
trainer's flip decision take them from here.
"""

from __future__ import annotations

DATASETS = ("mnist", "fashion-mnist", "cifar10", "folder")
"""The dataset names :func:`~diffusion_course.data.load_dataset` accepts."""

DEFAULT_DATASET = "fashion-mnist"
"""The course's dataset when nothing else is asked for (offline via Debian's package)."""

# Other spellings people type; check_dataset_name maps them to the names above.
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}

MNIST_CLASSES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

DATASET_INFO: dict[str, dict] = {
    "mnist": {"image_size": 28, "channels": 1, "num_classes": 10, "classes": MNIST_CLASSES},
    "fashion-mnist": {"image_size": 28, "channels": 1, "num_classes": 10, "classes": FASHION_MNIST_CLASSES},
    "cifar10": {"image_size": 32, "channels": 3, "num_classes": 10, "classes": CIFAR10_CLASSES},
    # A folder's size and channels are those of its first image; its classes are its subfolders.
    "folder": {"image_size": None, "channels": None, "num_classes": None, "classes": None},
}
"""Native ``image_size`` (square side), ``channels``, ``num_classes`` and ``classes`` per dataset."""

FLIP_BY_DATASET = {"mnist": False, "fashion-mnist": False, "cifar10": True, "folder": True}
"""Whether ``hflip="auto"`` flips images left-right, per dataset.

- ``mnist``: never -- a mirrored 2, 3 or 7 is not a digit (``hflip="on"`` is refused).
- ``fashion-mnist``: off -- tops, trousers and bags are close to mirror-symmetric, but the
  shoes all point the same way: 100% of ankle boots, 99.7% of sneakers and 93% of sandals
  in the training set are closer to their class's mean image than to its mirror image.
  Flipping would teach the model mirrored shoes that the test set never contains.
- ``cifar10``: on, as in DDPM (appendix B) -- natural photos are mirror-symmetric.
- ``folder``: on, assuming natural photos; pass ``hflip="off"`` for text, digits, faces
  with a fixed layout, and the like.
"""


def check_dataset_name(name: str) -> str:
    """The canonical spelling of ``name`` (``"Fashion_MNIST"`` -> ``"fashion-mnist"``), or a ValueError."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return key


def default_hflip(name: str) -> bool:
    """Whether training on dataset ``name`` flips images left-right by default (see :data:`FLIP_BY_DATASET`)."""
    return FLIP_BY_DATASET[check_dataset_name(name)]
