"""Datasets as float tensors in [-1, 1], offline first.

Every model in this course sees images the way DDPM does (Ho et al. 2020, sec. 3.3): pixel
values 0..255 scaled linearly to ``[-1, 1]``, so that the data has the same scale as the
standard normal noise the forward process mixes in. This module turns four kinds of
image collections into exactly that:

``mnist``, ``fashion-mnist``
    28x28 grayscale, 10 classes, 60,000 training and 10,000 test images, stored in the
    IDX format of LeCun et al. 1998 (Fashion-MNIST: Xiao et al. 2017). Fashion-MNIST is
    the course's default: harder than digits, still trains on a laptop CPU.
``cifar10``
    32x32 colour, 10 classes, 50,000 + 10,000 images (Krizhevsky 2009).
``folder``
    Any ImageFolder tree, ``<data_dir>/<class>/<image>``, optionally split into
    ``<data_dir>/train/...`` and ``<data_dir>/test/...``.

Where the data comes from, first match wins (nothing is downloaded if a local copy exists):

1. ``data_dir=`` (``--data-dir`` on the command line) when given: a folder with the IDX
   files (``.gz`` or not), an ImageFolder tree, or a ``.tar.gz`` of one.
2. The data root (:func:`default_data_root`, the repository's ``data/`` folder), laid out
   as torchvision lays it out (``data/FashionMNIST/raw/...``, ``data/cifar-10-batches-py``),
   plus ``data/cifar10-jpg/`` for the JPEG copy of CIFAR-10.
3. Offline copies on this machine: Debian's ``dataset-fashion-mnist`` package
   (:func:`fashion_mnist_system_dir`) is decompressed into the data root; the course's
   ``cifar10-jpg.tar.gz`` (:func:`cifar10_jpg_archive`) is unpacked into it.
4. A download through :mod:`torchvision.datasets` (``download=True``, needs a network once).

When none works, :class:`DatasetUnavailableError` says which dataset, where it looked and
how to fix it, in one line. It subclasses :class:`ValueError`, like every other bad-input
error in this package, so ``except ValueError`` catches it too.

Every dataset yields ``(image, label)`` with ``image`` a float32 ``[C, H, W]`` tensor in
``[-1, 1]`` and ``label`` an ``int``. :func:`load_tensors` returns a whole dataset as one
``[N, C, H, W]`` tensor, which is how the course's small models train fastest.

Command line: ``python -m diffusion_course.data prepare [fashion-mnist|mnist|cifar10|folder]``
makes a dataset ready (``make lab`` runs it for the default) and exits 2 with the one-line
error when it cannot.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import math
import os
import shutil
import socket
import struct
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

# --------------------------------------------------------------------------------------
# What exists
# --------------------------------------------------------------------------------------

DATASETS = ("mnist", "fashion-mnist", "cifar10", "folder")
"""The dataset names :func:`load_dataset` accepts."""

DEFAULT_DATASET = "fashion-mnist"
"""The course's dataset when nothing else is asked for (offline via Debian's package)."""

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
"""Whether random left-right flips suit a dataset (the trainer's ``hflip="auto"``).

- ``mnist``: never -- a mirrored 2, 3 or 7 is not a digit (``hflip="on"`` is refused).
- ``fashion-mnist``: off -- tops, trousers and bags are close to mirror-symmetric, but the
  shoes all point the same way: 100% of ankle boots, 99.7% of sneakers and 93% of sandals
  in the training set are closer to their class's mean image than to its mirror image.
  Flipping would teach the model mirrored shoes that the test set never contains.
- ``cifar10``: on, as in DDPM (appendix B) -- natural photos are mirror-symmetric.
- ``folder``: on, assuming natural photos; pass ``hflip="off"`` for text, digits, faces
  with a fixed layout, and the like.
"""


def default_hflip(name: str) -> bool:
    """Whether dataset ``name`` is trained with random left-right flips by default."""
    return FLIP_BY_DATASET[check_dataset_name(name)]


_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}

# torchvision's folder and class for the IDX datasets: it keeps them in <root>/<folder>/raw/.
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
_CIFAR10_BATCHES = "cifar-10-batches-py"
_CIFAR10_JPG_FOLDER = "cifar10-jpg"

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the original gzip'd IDX files."""
FMNIST_DIR_ENV = "DIFFUSION_COURSE_FMNIST_DIR"
"""Environment variable that replaces :data:`FMNIST_SYSTEM_DIR` (tests point it at a fake set)."""
DATA_ROOT_ENV = "DIFFUSION_COURSE_DATA"

DOWNLOAD_TIMEOUT_S = 60
"""Seconds a download may wait for the network before it counts as failed."""
"""Environment variable that replaces :func:`default_data_root`."""
CIFAR10_JPG_ENV = "DIFFUSION_COURSE_CIFAR10_JPG"
"""Environment variable naming the CIFAR-10 JPEG archive, replacing the search of :func:`cifar10_jpg_archive`."""

CIFAR10_JPG_NAME = "cifar10-jpg.tar.gz"
CIFAR10_JPG_SHA256 = "bcb8d04715eead95cc9f3465f6eee7264d078bc8060569a5e658e1de523b8d6f"
"""sha256 of the course's CIFAR-10 JPEG archive (shared/data/README.md)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_TEST_SPLITS = ("test", "val", "valid", "validation")

_REPO_ROOT = Path(__file__).resolve().parents[1]


class DatasetUnavailableError(ValueError):
    """A dataset is neither on this machine nor downloadable; the message names the fixes."""


# --------------------------------------------------------------------------------------
# Where things live
# --------------------------------------------------------------------------------------


def default_data_root() -> Path:
    """The folder datasets are kept in.

    ``$DIFFUSION_COURSE_DATA`` if set; else the repository's ``data/`` folder when the package
    is an editable install (its parent folder has a ``pyproject.toml``); else
    ``~/.cache/diffusion-course/data``. The folder is not created here.
    """
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    if (_REPO_ROOT / "pyproject.toml").is_file():
        return _REPO_ROOT / "data"
    return Path.home() / ".cache" / "diffusion-course" / "data"


def fashion_mnist_system_dir() -> Path:
    """Debian's Fashion-MNIST folder, or ``$DIFFUSION_COURSE_FMNIST_DIR`` when set."""
    return Path(os.environ.get(FMNIST_DIR_ENV) or FMNIST_SYSTEM_DIR)


def cifar10_jpg_archive() -> Path | None:
    """The course's ``cifar10-jpg.tar.gz`` if it is on this machine, else ``None``.

    ``$DIFFUSION_COURSE_CIFAR10_JPG`` names it explicitly; otherwise it is looked for in
    ``shared/data/`` inside the repository and beside it (where CI puts ``shared/``).
    """
    if os.environ.get(CIFAR10_JPG_ENV):
        candidates = [Path(os.environ[CIFAR10_JPG_ENV]).expanduser()]
    else:
        candidates = [base / "shared" / "data" / CIFAR10_JPG_NAME for base in (_REPO_ROOT, _REPO_ROOT.parent)]
    return next((path for path in candidates if path.is_file()), None)


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

    Attributes: ``name`` (one of :data:`DATASETS`), ``classes`` (list of class names, index =
    label), ``channels``, ``image_size``, ``source`` (the folder the data was read from).
    Subclasses provide ``__len__`` and :meth:`pixels`.
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


def read_image(path: Path, channels: int) -> torch.Tensor:
    """Decode an image file with PIL to uint8 ``[channels, H, W]`` (1 = gray "L", 3 = "RGB")."""
    with Image.open(path) as image:
        array = np.array(image.convert("L" if channels == 1 else "RGB"))
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


# --------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files
# --------------------------------------------------------------------------------------


def _idx_names(train: bool) -> tuple[str, str]:
    split = "train" if train else "t10k"
    return f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"


def find_idx_files(folder: Path, train: bool) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of one split in ``folder``, plain or ``.gz``; ``None`` if absent."""
    found = []
    for name in _idx_names(train):
        path = next((folder / (name + ext) for ext in ("", ".gz") if (folder / (name + ext)).is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (plain or ``.gz``) into a uint8 tensor of its shape.

    Format (LeCun et al.): two zero bytes, a type byte (0x08 = unsigned byte), the number of
    dimensions, each dimension as a big-endian uint32, then the values in row-major order.
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


def _write_atomically(dest: Path, write: Callable) -> None:
    """Call ``write(file)`` on a temporary file beside ``dest``, then rename it to ``dest``.

    The rename is atomic, so an interrupted copy leaves no half-written ``dest`` behind.
    """
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the data is not secret
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install_idx_files(source: Path, dest: Path) -> Path:
    """Decompress the four IDX files of ``source`` into ``dest`` (torchvision's ``raw/`` folder).

    Files already in ``dest`` are kept. Returns ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        for src in find_idx_files(source, train) or ():
            target = dest / src.name.removesuffix(".gz")
            if target.is_file():
                continue
            opener = gzip.open if src.suffix == ".gz" else open

            def copy(out, src=src, opener=opener):
                with opener(src, "rb") as file:
                    shutil.copyfileobj(file, out, 1 << 20)

            _write_atomically(target, copy)
    return dest


def _has_both_splits(folder: Path) -> bool:
    return find_idx_files(folder, True) is not None and find_idx_files(folder, False) is not None


def _locate_idx(name: str, train: bool, data_dir: Path | None, root: Path, download: bool) -> Path:
    """The folder holding ``name``'s IDX files for the split, getting them there if needed."""
    if data_dir is not None:
        for folder in (data_dir, data_dir / _IDX_FOLDERS[name] / "raw"):
            if find_idx_files(folder, train):
                return folder
        images, labels = _idx_names(train)
        raise DatasetUnavailableError(
            f"{name}: no {images}[.gz] and {labels}[.gz] in data_dir {data_dir}; "
            f"pass data_dir= (--data-dir) a folder that holds the IDX files"
        )
    raw = root / _IDX_FOLDERS[name] / "raw"
    if find_idx_files(raw, train):
        return raw
    looked = [raw]
    if name == "fashion-mnist":
        system = fashion_mnist_system_dir()
        looked.append(system)
        if _has_both_splits(system):
            try:
                return install_idx_files(system, raw)
            except OSError:  # data root not writable: read the packaged copy where it is
                return system
    _download(name, root, train, download, looked)
    return raw


def _load_idx(name: str, train: bool, data_dir: Path | None, root: Path, download: bool) -> TensorImageDataset:
    folder = _locate_idx(name, train, data_dir, root, download)
    image_file, label_file = find_idx_files(folder, train)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: {image_file} and {label_file} do not match ({images.shape} vs {labels.shape})")
    info = DATASET_INFO[name]
    return TensorImageDataset(
        images[:, None], labels, name=name, classes=info["classes"],
        channels=info["channels"], image_size=info["image_size"], source=folder,
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Downloads and what to say when there is no data
# --------------------------------------------------------------------------------------


def _fixes(name: str, root: Path) -> str:
    fixes = [f"connect to the internet once (the download is kept in {root})"]
    if name == "fashion-mnist":
        fixes.append("`sudo apt-get install dataset-fashion-mnist`")
    if name == "cifar10":
        fixes.append(f"`python -m diffusion_course.data prepare cifar10 --archive path/to/{CIFAR10_JPG_NAME}`")
    fixes.append("pass data_dir= (--data-dir) pointing to a local copy")
    return "; or ".join(fixes)


def _torchvision_dataset(name: str) -> type:
    """torchvision's class for ``name``, imported only when needed (importing torchvision takes seconds)."""
    from torchvision import datasets

    return getattr(datasets, _TORCHVISION[name])


def _download(name: str, root: Path, train: bool, download: bool, looked: list[Path]) -> None:
    """Fetch ``name`` into ``root`` with torchvision, or raise :class:`DatasetUnavailableError`."""
    where = ", ".join(str(path) for path in looked)
    if not download:
        reason = "download=False"
    else:
        # a network that silently drops packets would otherwise hang the download forever
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            _torchvision_dataset(name)(root=str(root), train=train, download=True)
            return
        except Exception as error:  # torchvision raises RuntimeError/URLError/OSError with long texts
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = f"the download failed ({lines[-1][:160] if lines else type(error).__name__})"
        finally:
            socket.setdefaulttimeout(previous_timeout)
    message = f"{name} is not on this machine (looked in {where}) and {reason}. Fix: {_fixes(name, root)}"
    raise DatasetUnavailableError(message) from None


# --------------------------------------------------------------------------------------
# Image folders and archives of them
# --------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(folder: Path) -> list[Path]:
    """Subfolders that hold at least one image; hidden ones (``.ipynb_checkpoints``) are skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        (sub for sub in folder.iterdir() if sub.is_dir() and not sub.name.startswith(".") and _holds_images(sub)),
        key=lambda sub: sub.name,
    )


def _holds_images(folder: Path) -> bool:
    return any(_is_image(name) for _, _, names in os.walk(folder) for name in names)


def split_folder(folder: Path, train: bool) -> Path:
    """The folder of one split of an ImageFolder tree.

    A tree with ``train/`` or ``test/`` (also ``val/``) subfolders is split: ``train=True``
    picks ``train/``, ``train=False`` the test one. Otherwise the tree itself is used.
    """
    folder = Path(folder)
    test = next((folder / name for name in _TEST_SPLITS if (folder / name).is_dir()), None)
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


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack_image_archive(
    archive: Path | str, dest: Path | str, *, expected_sha256: str | None = None, progress: bool = True
) -> Path:
    """Unpack a tar archive of an ImageFolder tree into ``dest`` and return ``dest``.

    Skipped when ``dest`` already exists. The archive is checked against ``expected_sha256``
    when given, unpacked into a temporary folder beside ``dest`` and renamed into place at
    the end, so an interrupted unpack never looks finished. An archive with one top folder
    (``name/train/...``) is unpacked without it. Members that would land outside ``dest``
    (absolute paths, ``..``, links) are refused.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    if not archive.is_file():
        raise DatasetUnavailableError(f"archive {archive} does not exist; check the path")
    if expected_sha256 is not None and (actual := sha256_file(archive)) != expected_sha256:
        raise DatasetUnavailableError(
            f"{archive} has sha256 {actual}, expected {expected_sha256}: "
            "it is damaged or another version; copy it again"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial"))
    workdir.chmod(0o755)  # mkdtemp makes it private; it becomes dest, an ordinary folder
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tqdm(tar.getmembers(), desc=f"unpacking {archive.name}", unit="file", disable=not progress)
            _extract_safely(tar, members, workdir)
        top = _tree_top(workdir)
        if dest.is_dir():
            dest.rmdir()  # empty, checked above
        os.replace(top, dest)
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise DatasetUnavailableError(f"cannot unpack {archive}: {error}; copy the archive again") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return dest


def _extract_safely(tar: tarfile.TarFile, members: Iterable[tarfile.TarInfo], dest: Path) -> None:
    """Extract ``members`` if each is a plain file or folder that stays inside ``dest``."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4 checks this itself
        tar.extractall(dest, members=members, filter="data")
        return
    for member in members:
        if member.name.startswith("/") or ".." in Path(member.name).parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"refusing to unpack {member.name!r} (outside the folder or not a file)")
        tar.extract(member, dest)


def _tree_top(folder: Path) -> Path:
    """``folder``, or its only subfolder when that is a wrapper (holds folders only, and is no split)."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in ("train", *_TEST_SPLITS):
        return folder
    wrapper = entries[0]
    return folder if any(entry.is_file() for entry in wrapper.iterdir()) else wrapper


def prepare_cifar10_jpg(archive: Path | str | None = None, root: Path | str | None = None) -> Path:
    """Unpack the course's CIFAR-10 JPEG archive into ``<root>/cifar10-jpg`` and return that folder.

    ``archive`` defaults to :func:`cifar10_jpg_archive`; ``root`` to :func:`default_data_root`.
    A file named ``cifar10-jpg.tar.gz`` must have the known sha256. Nothing happens when the
    folder is already there. The result holds ``train/<class>/*.jpg`` (50,000 images) and
    ``test/<class>/*.jpg`` (10,000).
    """
    root = Path(root) if root is not None else default_data_root()
    dest = root / _CIFAR10_JPG_FOLDER
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    archive = Path(archive) if archive is not None else cifar10_jpg_archive()
    if archive is None:
        raise DatasetUnavailableError(
            f"cifar10: no {CIFAR10_JPG_NAME} found (set {CIFAR10_JPG_ENV} or pass --archive path/to/{CIFAR10_JPG_NAME})"
        )
    expected = CIFAR10_JPG_SHA256 if archive.name == CIFAR10_JPG_NAME else None
    return unpack_image_archive(archive, dest, expected_sha256=expected)


_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.xz", ".tar.bz2")


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    suffix = next(suffix for suffix in _ARCHIVE_SUFFIXES if name.lower().endswith(suffix))
    return name[: -len(suffix)]


def _first_image_format(path: Path) -> tuple[int, int]:
    """``(channels, shorter side)`` of an image file: 1 channel for grayscale modes, else 3."""
    with Image.open(path) as image:
        channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        return channels, min(image.size)


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


# --------------------------------------------------------------------------------------
# CIFAR-10 and folders
# --------------------------------------------------------------------------------------


def _load_cifar10_batches(root: Path, train: bool) -> TensorImageDataset:
    """torchvision's pickled CIFAR-10 batches in ``root/cifar-10-batches-py`` (uint8 in memory)."""
    try:
        cifar = _torchvision_dataset("cifar10")(root=str(root), train=train, download=False)
    except RuntimeError:  # torchvision checks every file's md5
        raise DatasetUnavailableError(
            f"cifar10: {root / _CIFAR10_BATCHES} is incomplete or damaged; delete it and load again"
        ) from None
    pixels = torch.from_numpy(cifar.data).permute(0, 3, 1, 2)  # [N, H, W, 3] -> [N, 3, H, W]
    return TensorImageDataset(
        pixels, torch.tensor(cifar.targets), name="cifar10", classes=CIFAR10_CLASSES,
        channels=3, image_size=32, source=root / _CIFAR10_BATCHES,
    )  # fmt: skip


def _load_cifar10(train: bool, data_dir: Path | None, root: Path, download: bool) -> CourseDataset:
    """CIFAR-10 from data_dir, torchvision's files, the unpacked JPEGs, the JPEG archive, or a download.

    Labels always follow :data:`CIFAR10_CLASSES`, whichever copy is read.
    """
    if data_dir is not None:
        if _is_archive(data_dir):
            return _load_image_folder("cifar10", prepare_cifar10_jpg(data_dir, root), train, CIFAR10_CLASSES)
        if (data_dir / _CIFAR10_BATCHES).is_dir():
            return _load_cifar10_batches(data_dir, train)
        return _load_image_folder("cifar10", data_dir, train, CIFAR10_CLASSES)
    if (root / _CIFAR10_BATCHES).is_dir():
        return _load_cifar10_batches(root, train)
    jpg = root / _CIFAR10_JPG_FOLDER
    archive = cifar10_jpg_archive()
    if not jpg.is_dir() and archive is not None:
        prepare_cifar10_jpg(archive, root)
    if jpg.is_dir():
        return _load_image_folder("cifar10", jpg, train, CIFAR10_CLASSES)
    _download("cifar10", root, train, download, [root / _CIFAR10_BATCHES, jpg])
    return _load_cifar10_batches(root, train)


def _load_folder(train: bool, data_dir: Path | None, root: Path) -> ImageFileDataset:
    if data_dir is None:
        raise ValueError(
            "dataset 'folder' needs data_dir= (--data-dir path/to/images), "
            "an ImageFolder tree <data_dir>/<class>/<image>"
        )
    if _is_archive(data_dir):
        data_dir = unpack_image_archive(data_dir, root / _archive_stem(data_dir))
    return _load_image_folder("folder", data_dir, train)


# --------------------------------------------------------------------------------------
# The public entry points
# --------------------------------------------------------------------------------------


def check_dataset_name(name: str) -> str:
    """The canonical spelling of ``name`` (``"Fashion_MNIST"`` -> ``"fashion-mnist"``), or a ValueError."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return key


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
        name: one of :data:`DATASETS` (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, ``"folder"``).
        train: the training split (else the test split).
        image_size: side of the square images returned; ``None`` keeps the native size
            (:data:`DATASET_INFO`; a folder's first image). Other sizes are resized with
            antialiasing (the shorter side, then a centre crop).
        channels: 1 (RGB becomes BT.601 gray), 3 (gray is repeated) or ``None`` for native.
        data_dir: a local copy to read instead of the data root: IDX files for MNIST-like
            data, an ImageFolder tree or a ``.tar.gz`` of one. Required for ``"folder"``.
        root: the data root, default :func:`default_data_root`.
        download: allow torchvision to download when no local copy exists.

    Returns:
        A :class:`CourseDataset` whose items are ``(float32 [channels, image_size, image_size]
        in [-1, 1], int label)``, with ``.name``, ``.classes``, ``.channels``, ``.image_size``,
        ``.source``.

    Raises:
        ValueError: unknown name or bad option. :class:`DatasetUnavailableError` (a ValueError)
        when the data is not on this machine and cannot be downloaded.
    """
    name = check_dataset_name(name)
    _check_options(image_size, channels)
    root = Path(root).expanduser() if root is not None else default_data_root()
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.exists():
            raise DatasetUnavailableError(f"{name}: data_dir {data_dir} does not exist; check the path")
    if name in _IDX_FOLDERS:
        dataset = _load_idx(name, train, data_dir, root, download)
    elif name == "cifar10":
        dataset = _load_cifar10(train, data_dir, root, download)
    else:
        dataset = _load_folder(train, data_dir, root)
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


# --------------------------------------------------------------------------------------
# Command line: python -m diffusion_course.data prepare [name]
# --------------------------------------------------------------------------------------


def prepare(
    name: str = DEFAULT_DATASET,
    *,
    data_dir: Path | str | None = None,
    root: Path | str | None = None,
    archive: Path | str | None = None,
) -> list[CourseDataset]:
    """Make ``name`` ready to load offline and return its splits (train, then test when there is one)."""
    name = check_dataset_name(name)
    if archive is not None:
        if name != "cifar10":
            raise ValueError("--archive is for cifar10 (the cifar10-jpg.tar.gz file); use --data-dir for folders")
        prepare_cifar10_jpg(archive, root)
    splits = [load_dataset(name, train=True, data_dir=data_dir, root=root)]
    if name != "folder" or splits[0].source.name == "train":  # a folder without splits has no test set
        splits.append(load_dataset(name, train=False, data_dir=data_dir, root=root))
    return splits


def main(argv: Sequence[str] | None = None) -> int:
    """``prepare [name] [--data-dir D] [--root R] [--archive A]``: 0 when ready, 2 with a one-line error."""
    parser = argparse.ArgumentParser(prog="python -m diffusion_course.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="make a dataset ready offline and say where it is")
    prep.add_argument("name", nargs="?", default=DEFAULT_DATASET, help=f"one of {', '.join(DATASETS)}")
    prep.add_argument("--data-dir", help="a local copy to use (IDX files, an ImageFolder tree or a .tar.gz of one)")
    prep.add_argument("--root", help=f"the data root (default: {default_data_root()})")
    prep.add_argument("--archive", help=f"cifar10 only: the {CIFAR10_JPG_NAME} file to unpack into the data root")
    args = parser.parse_args(argv)
    try:
        splits = prepare(args.name, data_dir=args.data_dir, root=args.root, archive=args.archive)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sizes = " + ".join(f"{len(split)} {'train' if i == 0 else 'test'}" for i, split in enumerate(splits))
    first = splits[0]
    where = os.path.commonpath([str(split.source) for split in splits])
    print(
        f"{first.name} ready: {sizes} images, {first.image_size}x{first.image_size}, {first.channels} channel(s), "
        f"{len(first.classes)} classes, in {where}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
