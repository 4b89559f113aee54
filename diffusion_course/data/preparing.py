"""Getting dataset files onto this machine, in the layout the reader expects.

Nothing here decodes an image: these functions find, copy, unpack or download files and
return the folder that holds them (:mod:`~diffusion_course.data.reading` turns that folder
into tensors). Where a dataset comes from, first match wins, and nothing is downloaded
when a local copy exists:

1. ``data_dir=`` (``--data-dir``) when given: a folder with the IDX files (``.gz`` or
   not), an ImageFolder tree, or a ``.tar.gz`` of one.
2. The data root (:func:`default_data_root`, the repository's ``data/`` folder), laid out
   as torchvision lays it out (``data/FashionMNIST/raw/...``, ``data/cifar-10-batches-py``),
   plus ``data/cifar10-jpg/`` for the JPEG copy of CIFAR-10.
3. Offline copies on this machine: Debian's ``dataset-fashion-mnist`` package
   (:func:`fashion_mnist_system_dir`) is decompressed into the data root; the course's
   ``cifar10-jpg.tar.gz`` (:func:`cifar10_jpg_archive`) is unpacked into it.
4. A download through :mod:`torchvision.datasets` (``download=True``, needs a network once).

When none works, :class:`DatasetUnavailableError` says which dataset, where it looked and
how to fix it, in one line.

Every file lands in its final place in one atomic step (a rename), so an interrupted copy
or unpack never looks finished: single files through
:func:`diffusion_course.checkpoint.atomic_write`, archives through a temporary folder.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from ..checkpoint import atomic_write


class DatasetUnavailableError(ValueError):
    """A dataset is neither on this machine nor downloadable; the message names the fixes.

    A :class:`ValueError`, like every other bad-input error in this package, so ``except
    ValueError`` catches it too.
    """


# --------------------------------------------------------------------------------------
# Where things live
# --------------------------------------------------------------------------------------

DATA_ROOT_ENV = "DIFFUSION_COURSE_DATA"
"""Environment variable that replaces :func:`default_data_root`."""
FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the original gzip'd IDX files."""
FMNIST_DIR_ENV = "DIFFUSION_COURSE_FMNIST_DIR"
"""Environment variable that replaces :data:`FMNIST_SYSTEM_DIR` (tests point it at a fake set)."""
CIFAR10_JPG_ENV = "DIFFUSION_COURSE_CIFAR10_JPG"
"""Environment variable naming the CIFAR-10 JPEG archive, replacing the search of :func:`cifar10_jpg_archive`."""
CIFAR10_JPG_NAME = "cifar10-jpg.tar.gz"
CIFAR10_JPG_SHA256 = "bcb8d04715eead95cc9f3465f6eee7264d078bc8060569a5e658e1de523b8d6f"
"""sha256 of the course's CIFAR-10 JPEG archive (shared/data/README.md)."""
DOWNLOAD_TIMEOUT_S = 60
"""Seconds a download may wait for the network before it counts as failed."""

# torchvision's dataset classes, and its folders under the data root: the IDX files of
# MNIST-like sets in <root>/<folder>/raw/, CIFAR-10's pickled batches in <root>/cifar-10-batches-py.
_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
CIFAR10_BATCHES = "cifar-10-batches-py"
_CIFAR10_JPG_FOLDER = "cifar10-jpg"

TEST_SPLITS = ("test", "val", "valid", "validation")
"""Names of an ImageFolder tree's test split folder (beside ``train/``), first found wins."""

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.xz", ".tar.bz2")
_REPO_ROOT = Path(__file__).resolve().parents[2]


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

            atomic_write(target, copy, mode=0o644)  # readable by all, like any downloaded data
    return dest


def _has_both_splits(folder: Path) -> bool:
    return find_idx_files(folder, True) is not None and find_idx_files(folder, False) is not None


def locate_idx(name: str, train: bool, data_dir: Path | None, root: Path, download: bool) -> Path:
    """The folder with the IDX files of ``name`` (mnist, fashion-mnist) for the split, getting them there if needed."""
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


# --------------------------------------------------------------------------------------
# CIFAR-10 and image folders
# --------------------------------------------------------------------------------------


def locate_cifar10(train: bool, data_dir: Path | None, root: Path, download: bool) -> Path:
    """The folder to read CIFAR-10 from: torchvision's ``cifar-10-batches-py`` or an ImageFolder tree.

    Tried in order: ``data_dir`` (an archive is unpacked under ``root``), torchvision's
    batches in ``root``, the unpacked JPEGs in ``root/cifar10-jpg`` (unpacked there first
    from :func:`cifar10_jpg_archive` when that exists), a download.
    """
    if data_dir is not None:
        if _is_archive(data_dir):
            return prepare_cifar10_jpg(data_dir, root)
        if (data_dir / CIFAR10_BATCHES).is_dir():
            return data_dir / CIFAR10_BATCHES
        return data_dir
    if (root / CIFAR10_BATCHES).is_dir():
        return root / CIFAR10_BATCHES
    jpg = root / _CIFAR10_JPG_FOLDER
    archive = cifar10_jpg_archive()
    if not jpg.is_dir() and archive is not None:
        prepare_cifar10_jpg(archive, root)
    if jpg.is_dir():
        return jpg
    _download("cifar10", root, train, download, [root / CIFAR10_BATCHES, jpg])
    return root / CIFAR10_BATCHES


def locate_folder(data_dir: Path | None, root: Path) -> Path:
    """The ImageFolder tree of dataset ``folder``: ``data_dir``, or where its archive was unpacked under ``root``."""
    if data_dir is None:
        raise ValueError(
            "dataset 'folder' needs data_dir= (--data-dir path/to/images), "
            "an ImageFolder tree <data_dir>/<class>/<image>"
        )
    if _is_archive(data_dir):
        return unpack_image_archive(data_dir, root / _archive_stem(data_dir))
    return data_dir


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


def _download(name: str, root: Path, train: bool, download: bool, looked: list[Path]) -> None:
    """Fetch ``name`` into ``root`` with torchvision, or raise :class:`DatasetUnavailableError`."""
    where = ", ".join(str(path) for path in looked)
    if not download:
        reason = "download=False"
    else:
        from torchvision import datasets  # imported only when needed: importing torchvision takes seconds

        # a network that silently drops packets would otherwise hang the download forever
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            getattr(datasets, _TORCHVISION[name])(root=str(root), train=train, download=True)
            return
        except Exception as error:  # torchvision raises RuntimeError/URLError/OSError with long texts
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = f"the download failed ({lines[-1][:160] if lines else type(error).__name__})"
        finally:
            socket.setdefaulttimeout(previous_timeout)
    message = f"{name} is not on this machine (looked in {where}) and {reason}. Fix: {_fixes(name, root)}"
    raise DatasetUnavailableError(message) from None


# --------------------------------------------------------------------------------------
# Archives of image folders
# --------------------------------------------------------------------------------------


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    suffix = next(suffix for suffix in _ARCHIVE_SUFFIXES if name.lower().endswith(suffix))
    return name[: -len(suffix)]


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
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 checks this itself
        tar.extractall(dest, members=members, filter="data")
        return
    for member in members:
        if member.name.startswith("/") or ".." in Path(member.name).parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"refusing to unpack {member.name!r} (outside the folder or not a file)")
        tar.extract(member, dest)


def _tree_top(folder: Path) -> Path:
    """``folder``, or its only subfolder when that is a wrapper (holds folders only, and is no split)."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in ("train", *TEST_SPLITS):
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
