"""Reading datasets as float tensors in [-1, 1]: the learner's side of :mod:`diffusion_course.data`.

Every model in this course sees images the way DDPM does (Ho et al. 2020, sec. 3.3): pixel
values 0..255 scaled linearly to ``[-1, 1]``, so that the data has the same scale as the
standard normal noise the forward process mixes in.

:func:`load_dataset` returns a :class:`CourseDataset` of ``(image, label)`` pairs, ``image``
a float32 ``[C, H, W]`` tensor in ``[-1, 1]`` and ``label`` an ``int``; :func:`load_tensors`
returns a whole split as one ``[N, C, H, W]`` tensor, which is how the course's small models
train fastest. Both find (or fetch) the files through :mod:`~diffusion_course.data.preparing`
and read them here: IDX files, torchvision's CIFAR-10 batches, or image files in an
ImageFolder tree.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .catalog import CIFAR10_CLASSES, DATASET_INFO, check_dataset_name
from .preparing import (
    CIFAR10_BATCHES,
    TEST_SPLITS,
    DatasetUnavailableError,
    default_data_root,
    find_idx_files,
    locate_cifar10,
    locate_folder,
    locate_idx,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File endings read as images in an ImageFolder tree (case-insensitive)."""

# --------------------------------------------------------------------------------------
# From pixels to model inputs
# --------------------------------------------------------------------------------------


def rgb_to_gray(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``[B, 3, H, W]`` to uint8 gray ``[B, 1, H, W]``: ITU-R BT.601 luma, 0.299 R + 0.587 G + 0.114 B.

    Computed in PIL's 16-bit fixed point, so the result equals ``Image.convert("L")`` exactly
    and white stays exactly 255.
    """
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)  # sum 65536
    luma = (pixels.to(torch.int32) * weights).sum(dim=1, keepdim=True)
    return ((luma + (1 << 15)) >> 16).to(torch.uint8)


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float ``[B, C, H, W]`` images to ``[B, C, size, size]``.

    The shorter side is scaled to ``size`` with antialiased bilinear filtering (so shrinking
    does not alias), then the longer side is centre-cropped. Bilinear weights are
    non-negative, so values stay within the input's range.
    """
    height, width = images.shape[-2:]
    if height == width == size:
        return images
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images[..., top : top + size, left : left + size]


def to_model_images(pixels: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` pixels (0..255, C = 1 or 3) to float32 ``[B, channels, size, size]`` in ``[-1, 1]``.

    0 maps to exactly -1 and 255 to exactly 1 (DDPM sec. 3.3). ``channels=1`` turns RGB into
    gray (:func:`rgb_to_gray`), ``channels=3`` repeats gray; other sizes go through
    :func:`resize_square`.
    """
    if pixels.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    have = pixels.shape[1]
    if have not in (1, 3) or channels not in (1, 3):
        raise ValueError(f"cannot convert {have}-channel images to {channels} channels; use channels=1 or 3")
    if have == 3 and channels == 1:
        pixels = rgb_to_gray(pixels)
    images = resize_square(pixels.float() / 255.0, size)
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)  # repeated after resizing, so the resize handles one channel
    return (images * 2.0 - 1.0).clamp_(-1.0, 1.0).contiguous()


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


class CourseDataset(Dataset):
    """A dataset of ``(image float32 [channels, image_size, image_size] in [-1, 1], int label)``.

    Attributes: ``name`` (one of :data:`~diffusion_course.data.DATASETS`), ``classes`` (list
    of class names, index = label), ``channels``, ``image_size``, ``source`` (the folder the
    data was read from). Subclasses provide ``__len__`` and :meth:`pixels`.
    """

    def __init__(self, name: str, classes: Sequence[str], channels: int, image_size: int, source: Path):
        self.name = name
        self.classes = list(classes)
        self.channels = channels
        self.image_size = image_size
        self.source = Path(source)

    def pixels(self, index: int) -> tuple[torch.Tensor, int]:
        """The stored image as uint8 ``[C, H, W]`` (before any conversion) and its label."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels, label = self.pixels(index)
        return to_model_images(pixels[None], self.channels, self.image_size)[0], label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, size={len(self)}, channels={self.channels}, "
            f"image_size={self.image_size}, source='{self.source}')"
        )


class TensorImageDataset(CourseDataset):
    """Images held in memory as one uint8 ``[N, C, H, W]`` tensor with labels ``[N]`` (MNIST, CIFAR-10)."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.images = pixels
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def pixels(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class ImageFileDataset(CourseDataset):
    """Images decoded from files on demand; ``samples`` is a list of ``(path, label)``."""

    def __init__(self, samples: list[tuple[Path, int]], native_channels: int, **kwargs):
        super().__init__(**kwargs)
        self.samples = samples
        self.native_channels = native_channels

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return read_image(path, self.native_channels), label


# --------------------------------------------------------------------------------------
# File formats: IDX, image files, ImageFolder trees
# --------------------------------------------------------------------------------------


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (plain or ``.gz``) into a uint8 tensor of its shape.

    Format (LeCun et al. 1998): two zero bytes, a type byte (0x08 = unsigned byte), the number
    of dimensions, each dimension as a big-endian uint32, then the values in row-major order.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes; copy it again")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = data[4 + 4 * ndim :]
    if len(payload) != math.prod(shape):
        raise ValueError(f"{path} is truncated ({len(payload)} of {math.prod(shape)} bytes); copy it again")
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(shape)


def read_image(path: Path, channels: int) -> torch.Tensor:
    """Decode an image file with PIL to uint8 ``[channels, H, W]`` (1 = gray "L", 3 = "RGB")."""
    with Image.open(path) as image:
        array = np.array(image.convert("L" if channels == 1 else "RGB"))
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def _first_image_format(path: Path) -> tuple[int, int]:
    """``(channels, shorter side)`` of an image file: 1 channel for grayscale modes, else 3."""
    with Image.open(path) as image:
        channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        return channels, min(image.size)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _holds_images(folder: Path) -> bool:
    return any(_is_image(name) for _, _, names in os.walk(folder) for name in names)


def _class_folders(folder: Path) -> list[Path]:
    """Subfolders that hold at least one image; hidden ones (``.ipynb_checkpoints``) are skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        (sub for sub in folder.iterdir() if sub.is_dir() and not sub.name.startswith(".") and _holds_images(sub)),
        key=lambda sub: sub.name,
    )


def split_folder(folder: Path, train: bool) -> Path:
    """The folder of one split of an ImageFolder tree.

    A tree with ``train/`` or ``test/`` (also ``val/``) subfolders is split: ``train=True``
    picks ``train/``, ``train=False`` the test one. Otherwise the tree itself is used.
    """
    folder = Path(folder)
    test = next((folder / name for name in TEST_SPLITS if (folder / name).is_dir()), None)
    if (folder / "train").is_dir() or test is not None:
        chosen = folder / "train" if train else test
        if chosen is None or not chosen.is_dir():
            wanted = "train/" if train else "test/ (or val/)"
            raise DatasetUnavailableError(f"{folder} has no {wanted} split; add it or point data_dir at one split")
        return chosen
    return folder


def find_image_files(folder: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Scan an ImageFolder tree ``folder/<class>/**/<image>``.

    Returns ``(classes, samples)``: class names sorted (unless ``classes`` fixes the order and
    allowed names) and a list of ``(path, label)`` sorted by class, then path.
    """
    found = _class_folders(folder)
    if not found:
        raise DatasetUnavailableError(
            f"no class subfolders with images in {folder}; expected {folder}/<class>/<image>.png (ImageFolder layout)"
        )
    if classes is None:
        classes = [sub.name for sub in found]
    unknown = [sub.name for sub in found if sub.name not in classes]
    if unknown:
        raise DatasetUnavailableError(f"{folder} has class folders {unknown} that are not among {list(classes)}")
    samples = []
    for sub in found:
        label = list(classes).index(sub.name)
        for directory, dirnames, names in os.walk(sub):
            dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
            samples.extend((Path(directory) / name, label) for name in sorted(names) if _is_image(name))
    return list(classes), samples


# --------------------------------------------------------------------------------------
# One loader per kind of copy
# --------------------------------------------------------------------------------------


def _load_idx(name: str, train: bool, data_dir: Path | None, root: Path, download: bool) -> TensorImageDataset:
    """MNIST or Fashion-MNIST from its IDX files (uint8 in memory)."""
    folder = locate_idx(name, train, data_dir, root, download)
    image_file, label_file = find_idx_files(folder, train)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: {image_file} and {label_file} do not match ({images.shape} vs {labels.shape})")
    info = DATASET_INFO[name]
    return TensorImageDataset(
        images[:, None], labels, name=name, classes=info["classes"],
        channels=info["channels"], image_size=info["image_size"], source=folder,
    )  # fmt: skip


def _load_cifar10_batches(batches: Path, train: bool) -> TensorImageDataset:
    """torchvision's pickled CIFAR-10 batches in the folder ``batches`` (uint8 in memory)."""
    from torchvision.datasets import CIFAR10  # imported only when needed: importing torchvision takes seconds

    try:
        cifar = CIFAR10(root=str(batches.parent), train=train, download=False)
    except RuntimeError:  # torchvision checks every file's md5
        raise DatasetUnavailableError(
            f"cifar10: {batches} is incomplete or damaged; delete it and load again"
        ) from None
    pixels = torch.from_numpy(cifar.data).permute(0, 3, 1, 2)  # [N, H, W, 3] -> [N, 3, H, W]
    return TensorImageDataset(
        pixels, torch.tensor(cifar.targets), name="cifar10", classes=CIFAR10_CLASSES,
        channels=3, image_size=32, source=batches,
    )  # fmt: skip


def _load_image_folder(name: str, tree: Path, train: bool, classes: Sequence[str] | None = None) -> ImageFileDataset:
    """An ImageFolder tree (or one split of it) at its native channels and size."""
    split = split_folder(tree, train)
    classes, samples = find_image_files(split, classes)
    native_channels, native_size = _first_image_format(samples[0][0])
    info = DATASET_INFO[name]
    return ImageFileDataset(
        samples, native_channels, name=name, classes=classes,
        channels=info["channels"] or native_channels, image_size=info["image_size"] or native_size, source=split,
    )  # fmt: skip


def _load_cifar10(train: bool, data_dir: Path | None, root: Path, download: bool) -> CourseDataset:
    """CIFAR-10 from torchvision's batches or a tree of JPEGs; labels always follow :data:`CIFAR10_CLASSES`."""
    folder = locate_cifar10(train, data_dir, root, download)
    if folder.name == CIFAR10_BATCHES:
        return _load_cifar10_batches(folder, train)
    return _load_image_folder("cifar10", folder, train, CIFAR10_CLASSES)


# --------------------------------------------------------------------------------------
# The public entry points
# --------------------------------------------------------------------------------------


def _check_options(image_size: int | None, channels: int | None) -> None:
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int (e.g. 32) or None for the native size, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (gray), 3 (RGB) or None for the native channels, got {channels!r}")


def load_dataset(
    name: str,
    *,
    train: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
    data_dir: Path | str | None = None,
    root: Path | str | None = None,
    download: bool = True,
) -> CourseDataset:
    """Load one split of a dataset as ``(image, label)`` pairs.

    Args:
        name: one of :data:`~diffusion_course.data.DATASETS` (``"mnist"``, ``"fashion-mnist"``,
            ``"cifar10"``, ``"folder"``).
        train: the training split (else the test split).
        image_size: side of the square images returned; ``None`` keeps the native size
            (:data:`~diffusion_course.data.DATASET_INFO`; a folder's first image). Other sizes
            are resized with antialiasing (the shorter side, then a centre crop).
        channels: 1 (RGB becomes BT.601 gray), 3 (gray is repeated) or ``None`` for native.
        data_dir: a local copy to read instead of the data root: IDX files for MNIST-like
            data, an ImageFolder tree or a ``.tar.gz`` of one. Required for ``"folder"``.
        root: the data root, default :func:`~diffusion_course.data.default_data_root`.
        download: allow torchvision to download when no local copy exists.

    Returns:
        A :class:`CourseDataset` whose items are ``(float32 [channels, image_size, image_size]
        in [-1, 1], int label)``, with ``.name``, ``.classes``, ``.channels``, ``.image_size``,
        ``.source``.

    Raises:
        ValueError: unknown name or bad option. :class:`~diffusion_course.data.DatasetUnavailableError`
        (a ValueError) when the data is not on this machine and cannot be downloaded.
    """
    name = check_dataset_name(name)
    _check_options(image_size, channels)
    root = Path(root).expanduser() if root is not None else default_data_root()
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.exists():
            raise DatasetUnavailableError(f"{name}: data_dir {data_dir} does not exist; check the path")
    if name == "cifar10":
        dataset = _load_cifar10(train, data_dir, root, download)
    elif name == "folder":
        dataset = _load_image_folder("folder", locate_folder(data_dir, root), train)
    else:
        dataset = _load_idx(name, train, data_dir, root, download)
    dataset.image_size = image_size or dataset.image_size
    dataset.channels = channels or dataset.channels
    return dataset


def spread_indices(count: int, limit: int | None) -> torch.Tensor:
    """``limit`` indices spread evenly over ``range(count)`` (all of them when ``limit`` is None or larger).

    Evenly spread rather than the first ``limit``: image folders are sorted by class, so the
    first images would all be of one class.
    """
    if limit is None or limit >= count:
        return torch.arange(count)
    if limit < 1:
        raise ValueError(f"limit must be a positive number of images or None, got {limit!r}")
    steps = torch.arange(limit)
    return (2 * steps + 1) * count // (2 * limit)


def dataset_tensors(
    dataset: CourseDataset, *, limit: int | None = None, progress: bool = True, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``dataset`` (or ``limit`` evenly spread images) as ``(images [N, C, H, W] float32, labels [N] long)``.

    In-memory pixel tensors are converted in chunks without a Python loop per image; image
    files are decoded one by one, with a progress bar.
    """
    indices = spread_indices(len(dataset), limit)
    size, channels = dataset.image_size, dataset.channels
    images = torch.empty(len(indices), channels, size, size)
    if isinstance(dataset, TensorImageDataset):
        for start in range(0, len(indices), chunk):
            batch = indices[start : start + chunk]
            images[start : start + len(batch)] = to_model_images(dataset.images[batch], channels, size)
        return images, dataset.labels[indices].clone()
    labels = torch.empty(len(indices), dtype=torch.long)
    bar = tqdm(indices.tolist(), desc=f"loading {dataset.name}", unit="img", disable=not progress)
    for row, index in enumerate(bar):
        images[row], labels[row] = dataset[index]
    return images, labels


def load_tensors(
    name: str,
    *,
    train: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
    data_dir: Path | str | None = None,
    root: Path | str | None = None,
    limit: int | None = None,
    download: bool = True,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole dataset split as one tensor: ``(images [N, C, H, W] float32 in [-1, 1], labels [N] long)``.

    Takes the arguments of :func:`load_dataset`, plus ``limit`` (keep that many images,
    spread evenly over the split, see :func:`spread_indices`) and ``progress`` (a progress
    bar while decoding image files). Fashion-MNIST's 60,000 training images take about
    190 MB as float32 at 28x28.
    """
    dataset = load_dataset(
        name, train=train, image_size=image_size, channels=channels, data_dir=data_dir, root=root, download=download
    )
    return dataset_tensors(dataset, limit=limit, progress=progress)


def class_names(name: str, *, data_dir: Path | str | None = None) -> list[str]:
    """The class names of a dataset, index = label (a folder's need its ``data_dir``)."""
    name = check_dataset_name(name)
    if name != "folder":
        return list(DATASET_INFO[name]["classes"])
    if data_dir is None:
        raise ValueError("class_names('folder') needs data_dir= (the ImageFolder tree)")
    return find_image_files(split_folder(Path(data_dir), train=True))[0]


def dataset_stats(images: torch.Tensor) -> dict[str, float | int]:
    """Summary numbers of ``[N, C, H, W]`` images: ``mean``, ``std`` (over all values), ``min``, ``max``, ``count`` (N).

    Checkpoints store them so that a model can later say what data it was trained on; for
    data from :func:`load_tensors` min/max lie in [-1, 1].
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"dataset_stats expects float images [N, C, H, W], got {shape}")
    std, mean = torch.std_mean(images.detach().float(), correction=0)
    low, high = torch.aminmax(images.detach())
    return {
        "mean": mean.item(),
        "std": std.item(),
        "min": low.item(),
        "max": high.item(),
        "count": int(images.shape[0]),
    }
