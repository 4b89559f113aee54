"""Datasets as float tensors in [-1, 1], offline first.

Every model in this course sees images the way DDPM does (Ho et al. 2020, sec. 3.3): pixel
values 0..255 scaled linearly to ``[-1, 1]``. Four kinds of image collections are read
that way:

``mnist``, ``fashion-mnist``
    28x28 grayscale, 10 classes, 60,000 training and 10,000 test images, stored in the
    IDX format of LeCun et al. 1998 (Fashion-MNIST: Xiao et al. 2017). Fashion-MNIST is
    the course's default: harder than digits, still trains on a laptop CPU.
``cifar10``
    32x32 colour, 10 classes, 50,000 + 10,000 images (Krizhevsky 2009).
``folder``
    Any ImageFolder tree, ``<data_dir>/<class>/<image>``, optionally split into
    ``<data_dir>/train/...`` and ``<data_dir>/test/...``.

The package has two sides, like NVlabs' EDM keeps ``dataset_tool.py`` apart from its
dataset class:

:mod:`~diffusion_course.data.reading`
    what a learner calls: :func:`load_dataset` (``(image, label)`` pairs), :func:`load_tensors`
    (a whole split as one ``[N, C, H, W]`` tensor), :func:`class_names`, :func:`dataset_stats`.
:mod:`~diffusion_course.data.preparing`
    getting the files onto this machine: the data root, Debian's offline Fashion-MNIST,
    the course's CIFAR-10 JPEG archive, torchvision downloads, and
    :class:`DatasetUnavailableError` (a ValueError) with the fixes when none works.
:mod:`~diffusion_course.data.catalog`
    what exists: :data:`DATASETS`, their sizes and classes, which ones may be mirrored.
:mod:`~diffusion_course.data.cli`
    ``python -m diffusion_course.data prepare [fashion-mnist|mnist|cifar10|folder]`` makes a
    dataset ready (``make lab`` runs it for the default) and exits 2 with a one-line error
    when it cannot.
"""

from .catalog import (
    CIFAR10_CLASSES,
    DATASET_INFO,
    DATASETS,
    DEFAULT_DATASET,
    FASHION_MNIST_CLASSES,
    FLIP_BY_DATASET,
    MNIST_CLASSES,
    check_dataset_name,
    default_hflip,
)
from .cli import main, prepare
from .preparing import (
    CIFAR10_JPG_ENV,
    CIFAR10_JPG_NAME,
    CIFAR10_JPG_SHA256,
    DATA_ROOT_ENV,
    DOWNLOAD_TIMEOUT_S,
    FMNIST_DIR_ENV,
    FMNIST_SYSTEM_DIR,
    DatasetUnavailableError,
    cifar10_jpg_archive,
    default_data_root,
    fashion_mnist_system_dir,
    find_idx_files,
    install_idx_files,
    prepare_cifar10_jpg,
    sha256_file,
    unpack_image_archive,
)
from .reading import (
    IMAGE_EXTENSIONS,
    CourseDataset,
    ImageFileDataset,
    TensorImageDataset,
    class_names,
    dataset_stats,
    dataset_tensors,
    find_image_files,
    load_dataset,
    load_tensors,
    read_idx,
    read_image,
    resize_square,
    rgb_to_gray,
    split_folder,
    spread_indices,
    to_model_images,
)

__all__ = [
    # the learner's API
    "load_dataset", "load_tensors", "class_names", "dataset_stats", "dataset_tensors", "spread_indices",
    "CourseDataset", "TensorImageDataset", "ImageFileDataset", "DatasetUnavailableError",
    # what exists
    "DATASETS", "DEFAULT_DATASET", "DATASET_INFO", "MNIST_CLASSES", "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES",
    "FLIP_BY_DATASET", "check_dataset_name", "default_hflip",
    # pixels and files
    "to_model_images", "rgb_to_gray", "resize_square", "read_idx", "read_image", "find_image_files", "split_folder",
    "IMAGE_EXTENSIONS",
    # preparing, and where things live
    "prepare", "main", "default_data_root", "fashion_mnist_system_dir", "cifar10_jpg_archive", "find_idx_files",
    "install_idx_files", "prepare_cifar10_jpg", "unpack_image_archive", "sha256_file",
    "DATA_ROOT_ENV", "FMNIST_DIR_ENV", "FMNIST_SYSTEM_DIR", "CIFAR10_JPG_ENV", "CIFAR10_JPG_NAME", "CIFAR10_JPG_SHA256",
    "DOWNLOAD_TIMEOUT_S",
]  # fmt: skip
