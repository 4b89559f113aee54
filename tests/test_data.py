"""Tests for diffusion_course.data: offline copies, conversions to [-1, 1], archives, errors, CLI.

Nothing here may touch the network: an autouse fixture makes every socket connection fail,
points the data root at a temporary folder and hides the machine's offline copies unless a
test asks for them. Tests on the real Debian Fashion-MNIST and the real CIFAR-10 archive are
skipped where those are not installed.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets as tv_datasets

from diffusion_course import data
from diffusion_course.data import DatasetUnavailableError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
REAL_FMNIST = data.FMNIST_SYSTEM_DIR
HAVE_REAL_FMNIST = all((REAL_FMNIST / f"{name}.gz").is_file() for name in IDX_FILES)
needs_real_fmnist = pytest.mark.skipif(not HAVE_REAL_FMNIST, reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture(autouse=True)
def offline_and_isolated(monkeypatch, tmp_path):
    """No network, no writes to the repository's data/, no machine copies unless a test opts in."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests/test_data.py")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path / "default-root"))
    monkeypatch.setenv(data.FMNIST_DIR_ENV, str(tmp_path / "no-system-fashion-mnist"))
    monkeypatch.setenv(data.CIFAR10_JPG_ENV, str(tmp_path / "no-archive.tar.gz"))


def test_the_network_is_really_blocked():
    with pytest.raises(OSError):
        urllib.request.urlopen("http://example.com", timeout=1)


# --------------------------------------------------------------------------------------
# Helpers: a fake IDX set, image trees, archives
# --------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 ``array`` as a gzip'd IDX file (magic 0x00000800 + ndim, big-endian dims, bytes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fmnist(tmp_path):
    """A tiny Fashion-MNIST look-alike: 12 train and 5 test 28x28 images, gzip'd IDX like Debian's."""
    folder = tmp_path / "fake-fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(12, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9, 0, 4, 4, 1], dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, :2] = (0, 255)  # both ends of the range
    for name, array in arrays.items():
        write_idx(folder / f"{name}.gz", array)
    return folder, arrays


def save_png(path: Path, color, size=(40, 40), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def image_tree(tmp_path):
    """ImageFolder tree: cat/ = red, green, blue; dog/ = white, black (40x40 RGB PNGs), plus clutter."""
    root = tmp_path / "pets"
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        save_png(root / "cat" / f"{i}.png", color)
    for i, color in enumerate([(255, 255, 255), (0, 0, 0)]):
        save_png(root / "dog" / f"{i}.png", color)
    save_png(root / ".ipynb_checkpoints" / "x.png", (1, 2, 3))  # Jupyter leaves these around
    save_png(root / "cat" / ".hidden.png", (1, 2, 3))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def make_cifar_tar(path: Path, tmp_path: Path, wrapper: str | None = None) -> Path:
    """A tiny tar.gz in the layout of cifar10-jpg.tar.gz: train/<class>/NNNN.jpg and test/<class>/NNNN.jpg."""
    tree = tmp_path / "cifar-src"
    layout = {"train": {"airplane": 3, "cat": 2}, "test": {"cat": 1, "truck": 2}}
    for split, counts in layout.items():
        for cls, count in counts.items():
            for i in range(count):
                target = tree / split / cls / f"{i:04d}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), (10 * i, 100, 200)).save(target, quality=95)
    with tarfile.open(path, "w:gz") as tar:
        for split in layout:
            tar.add(tree / split, arcname=f"{wrapper}/{split}" if wrapper else split)
    return path


def no_torchvision_download(monkeypatch, *classes):
    """Make torchvision's downloads fail loudly, as they would offline, with a traceback-like text."""

    def fail(self):
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTraceback (most recent call last):\n"
            '  File "/site-packages/torchvision/datasets/mnist.py", line 1, in download\n'
            "URLError: <urlopen error [Errno -2] Name or service not known>"
        )

    for cls in classes:
        monkeypatch.setattr(cls, "download", fail)


# --------------------------------------------------------------------------------------
# Pixels to [-1, 1]
# --------------------------------------------------------------------------------------


def test_to_model_images_maps_0_and_255_to_the_ends():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 1, 3, 3)
    out = data.to_model_images(pixels, channels=1, size=3)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 3, 3)
    assert out[0, 0, 0].tolist() == pytest.approx([-1.0, 51 / 127.5 - 1, 1.0], abs=1e-6)
    assert out[0, 0, 0, 0].item() == -1.0 and out[0, 0, 0, 2].item() == 1.0


def test_to_model_images_rejects_floats():
    with pytest.raises(ValueError, match="uint8"):
        data.to_model_images(torch.zeros(1, 1, 4, 4), channels=1, size=4)


def test_gray_matches_pil_and_rgb_repeats_gray():
    rgb = np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    rgb[0, :3] = [(255, 255, 255), (0, 0, 0), (255, 0, 0)]
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    pil_gray = torch.from_numpy(np.array(Image.fromarray(rgb).convert("L")))
    assert torch.equal(data.rgb_to_gray(pixels)[0, 0], pil_gray)
    gray = data.to_model_images(pixels[..., :6], channels=1, size=6)
    assert gray.shape == (1, 1, 6, 6) and gray[0, 0, 0, 0].item() == 1.0 and gray[0, 0, 0, 1].item() == -1.0
    assert gray[0, 0, 0, 2].item() == pytest.approx(76 / 127.5 - 1, abs=1e-6)  # red: 0.299 * 255 = 76
    back = data.to_model_images(torch.full((1, 1, 2, 2), 200, dtype=torch.uint8), channels=3, size=2)
    assert back.shape == (1, 3, 2, 2)
    assert torch.equal(back[:, 0], back[:, 1]) and torch.equal(back[:, 1], back[:, 2])


def test_resize_is_antialiased():
    # Shrinking 4x must average over the whole footprint: white noise then loses most of its
    # spread. Plain bilinear interpolation reads only 2x2 pixels and keeps far more of it.
    noise = torch.randint(0, 256, (1, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    small = data.to_model_images(noise, channels=1, size=8)
    assert small.shape == (1, 1, 8, 8)
    full = noise.float() / 127.5 - 1
    plain = F.interpolate(full, size=(8, 8), mode="bilinear", antialias=False)
    assert small.std() < 0.5 * plain.std()
    antialiased = F.interpolate(full, size=(8, 8), mode="bilinear", antialias=True)
    assert torch.allclose(small, antialiased, atol=1e-6)


def test_resize_square_crops_the_centre_of_wide_images():
    wide = torch.zeros(1, 3, 20, 40)
    wide[:, 0, :, 10:30] = 1.0  # red middle half, black left and right quarters
    out = data.resize_square(wide, 16)
    assert out.shape == (1, 3, 16, 16)
    assert out[0, 0, :, 2:-2].min().item() > 0.99 and out[0, 1:].abs().max().item() == 0.0


def test_other_channel_counts_are_refused():
    with pytest.raises(ValueError, match="cannot convert 4-channel images"):
        data.to_model_images(torch.zeros(1, 4, 2, 2, dtype=torch.uint8), channels=3, size=2)


# --------------------------------------------------------------------------------------
# Fashion-MNIST from an offline copy (a fake one), MNIST from data_dir
# --------------------------------------------------------------------------------------


def test_offline_copy_is_decompressed_into_torchvision_layout(fake_fmnist, monkeypatch, tmp_path):
    folder, arrays = fake_fmnist
    monkeypatch.setenv(data.FMNIST_DIR_ENV, str(folder))
    root = tmp_path / "root"
    train = data.load_dataset("fashion-mnist", root=root)
    raw = root / "FashionMNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted(IDX_FILES)  # all four files, no temporary leftovers
    assert all((raw / name).stat().st_mode & 0o444 == 0o444 for name in IDX_FILES)  # readable by all
    for name in IDX_FILES:
        assert (raw / name).read_bytes() == gzip.decompress((folder / f"{name}.gz").read_bytes())
    assert train.source == raw and train.name == "fashion-mnist"
    assert len(train) == 12 and train.channels == 1 and train.image_size == 28
    assert train.classes == list(data.FASHION_MNIST_CLASSES)
    image, label = train[3]
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"][3]).float() / 127.5 - 1
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert torch.allclose(image[0], expected, atol=1e-6)
    assert label == 3 and isinstance(label, int)
    test = data.load_dataset("fashion-mnist", train=False, root=root)
    assert len(test) == 5 and [test[i][1] for i in range(5)] == [9, 0, 4, 4, 1]
    # torchvision itself reads the copy, offline.
    tv = tv_datasets.FashionMNIST(str(root), train=True, download=False)
    assert torch.equal(tv.data, torch.from_numpy(arrays["train-images-idx3-ubyte"]))


def test_items_batch_with_a_dataloader(fake_fmnist, monkeypatch, tmp_path):
    monkeypatch.setenv(data.FMNIST_DIR_ENV, str(fake_fmnist[0]))
    dataset = data.load_dataset("fashion-mnist", root=tmp_path / "root", image_size=32, channels=3)
    images, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 3] and labels.dtype == torch.long


def test_offline_copy_is_made_once(fake_fmnist, monkeypatch, tmp_path):
    folder, _ = fake_fmnist
    monkeypatch.setenv(data.FMNIST_DIR_ENV, str(folder))
    root = tmp_path / "root"
    data.load_dataset("fashion-mnist", root=root)
    shutil.rmtree(folder)  # the copy in the data root is enough from now on
    assert len(data.load_dataset("fashion-mnist", root=root, train=False)) == 5


def test_an_interrupted_copy_leaves_no_file(fake_fmnist, monkeypatch, tmp_path):
    folder, _ = fake_fmnist
    monkeypatch.setenv(data.FMNIST_DIR_ENV, str(folder))
    real_copy = shutil.copyfileobj

    def copy_half_then_die(source, target, length=0):
        target.write(source.read(100))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", copy_half_then_die)
    root = tmp_path / "root"
    with pytest.raises(KeyboardInterrupt):
        data.load_dataset("fashion-mnist", root=root)
    assert os.listdir(root / "FashionMNIST" / "raw") == []
    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    assert len(data.load_dataset("fashion-mnist", root=root)) == 12


def test_data_dir_with_gzip_idx_files_is_read_in_place(fake_fmnist, tmp_path):
    folder, arrays = fake_fmnist
    root = tmp_path / "untouched-root"
    images, labels = data.load_tensors("mnist", data_dir=folder, root=root, train=False)
    assert images.shape == (5, 1, 28, 28) and labels.dtype == torch.long
    assert labels.tolist() == [9, 0, 4, 4, 1]
    assert torch.allclose(images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 127.5 - 1)
    assert not root.exists()


def test_data_dir_without_idx_files_says_so(tmp_path):
    with pytest.raises(DatasetUnavailableError, match=r"mnist: no train-images-idx3-ubyte\[\.gz\].*data_dir"):
        data.load_dataset("mnist", data_dir=tmp_path, root=tmp_path / "root")


def test_read_idx_rejects_damaged_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "junk")
    write_idx(tmp_path / "short.gz", np.zeros((3, 2, 2), dtype=np.uint8))
    whole = gzip.decompress((tmp_path / "short.gz").read_bytes())
    (tmp_path / "short").write_bytes(whole[:-1])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "short")


# --------------------------------------------------------------------------------------
# No data and no network: one clear line
# --------------------------------------------------------------------------------------


def test_offline_error_names_dataset_paths_and_fixes(monkeypatch, tmp_path):
    no_torchvision_download(monkeypatch, tv_datasets.FashionMNIST)
    root = tmp_path / "root"
    with pytest.raises(DatasetUnavailableError) as info:
        data.load_dataset("fashion-mnist", root=root)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith("fashion-mnist is not on this machine")
    assert str(root / "FashionMNIST" / "raw") in message
    assert str(tmp_path / "no-system-fashion-mnist") in message
    assert "connect to the internet once" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "data_dir=" in message and "--data-dir" in message
    assert "\n" not in message
    assert "Traceback" not in message and "torchvision" not in message and "mnist.py" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_real_failed_download_becomes_the_clear_error(tmp_path):
    # No monkeypatching of torchvision: its download really runs and hits the blocked sockets.
    root = tmp_path / "root"
    with pytest.raises(DatasetUnavailableError, match=r"^mnist is not on this machine .*the download failed") as info:
        data.load_tensors("mnist", root=root)
    message = str(info.value)
    assert "connect to the internet once" in message and "data_dir=" in message
    assert "apt-get" not in message  # Debian packages Fashion-MNIST only
    assert "\n" not in message and "Traceback" not in message
    assert data.find_idx_files(root / "MNIST" / "raw", train=True) is None


def test_download_false_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setattr(tv_datasets.MNIST, "download", lambda self: pytest.fail("download attempted"))
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        data.load_dataset("mnist", root=tmp_path, download=False)


def test_cifar10_offline_error_mentions_the_archive(monkeypatch, tmp_path):
    no_torchvision_download(monkeypatch, tv_datasets.CIFAR10)
    with pytest.raises(DatasetUnavailableError) as info:
        data.load_dataset("cifar10", root=tmp_path / "root")
    message = str(info.value)
    assert message.startswith("cifar10 is not on this machine")
    assert str(tmp_path / "root" / "cifar-10-batches-py") in message
    assert "prepare cifar10 --archive" in message and "internet" in message and "data_dir=" in message
    assert "Traceback" not in message and "\n" not in message


def test_damaged_torchvision_cifar10_files_are_reported(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DatasetUnavailableError, match="incomplete or damaged"):
        data.load_dataset("cifar10", root=tmp_path)


# --------------------------------------------------------------------------------------
# Names and options
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("function", [data.load_dataset, data.load_tensors, data.class_names])
def test_unknown_names_list_the_valid_ones(function):
    valid = "mnist, fashion-mnist, cifar10, folder"
    with pytest.raises(ValueError, match=rf"unknown dataset 'imagenet'; choose one of: {valid}"):
        function("imagenet")


def test_name_spellings_are_forgiven():
    assert data.check_dataset_name("Fashion_MNIST") == "fashion-mnist"
    assert data.check_dataset_name("CIFAR-10") == "cifar10"


@pytest.mark.parametrize(
    ("option", "match"), [({"channels": 2}, "channels must be 1"), ({"image_size": 0}, "positive int")]
)
def test_bad_options_are_refused(option, match):
    with pytest.raises(ValueError, match=match):
        data.load_dataset("mnist", **option)


def test_dataset_info_and_class_names():
    assert data.DATASETS == ("mnist", "fashion-mnist", "cifar10", "folder")
    assert data.DEFAULT_DATASET == "fashion-mnist"
    assert data.DATASET_INFO["fashion-mnist"]["image_size"] == 28 and data.DATASET_INFO["mnist"]["channels"] == 1
    assert data.DATASET_INFO["cifar10"]["image_size"] == 32 and data.DATASET_INFO["cifar10"]["channels"] == 3
    assert data.class_names("cifar10")[3] == "cat" and data.class_names("fashion-mnist")[9] == "Ankle boot"
    assert data.class_names("mnist") == [str(d) for d in range(10)]
    with pytest.raises(ValueError, match="needs data_dir"):
        data.class_names("folder")


def test_every_dataset_has_its_info_and_flip_policy():
    # one vocabulary: a dataset added to DATASETS but forgotten in a table fails here
    assert tuple(data.DATASET_INFO) == data.DATASETS and tuple(data.FLIP_BY_DATASET) == data.DATASETS


def test_default_hflip():
    assert [data.default_hflip(name) for name in data.DATASETS] == [False, False, True, True]
    assert data.default_hflip("CIFAR-10") and not data.default_hflip("Fashion_MNIST")  # other spellings too
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.default_hflip("imagenet")


def test_spread_indices():
    assert data.spread_indices(10, 3).tolist() == [1, 5, 8]
    assert data.spread_indices(3, None).tolist() == [0, 1, 2]
    assert data.spread_indices(3, 10).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="limit"):
        data.spread_indices(3, 0)


def test_dataset_stats():
    images = torch.tensor([-1.0, 1.0, 1.0, -1.0]).view(2, 1, 1, 2)
    assert data.dataset_stats(images) == {"mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0, "count": 2}
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        data.dataset_stats(torch.zeros(3, 4))


def test_default_data_root(monkeypatch, tmp_path, repo_root):
    monkeypatch.delenv(data.DATA_ROOT_ENV)
    assert data.default_data_root() == repo_root / "data"  # editable install: the repository's data/
    # a site-packages install has no pyproject.toml above it
    monkeypatch.setattr(data.preparing, "_REPO_ROOT", tmp_path)
    assert data.default_data_root() == Path.home() / ".cache" / "diffusion-course" / "data"
    monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path / "elsewhere"))
    assert data.default_data_root() == tmp_path / "elsewhere"


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------


def test_folder_at_native_size(image_tree):
    dataset = data.load_dataset("folder", data_dir=image_tree)
    assert dataset.classes == ["cat", "dog"]  # no .ipynb_checkpoints, no empty/
    assert len(dataset) == 5 and dataset.channels == 3 and dataset.image_size == 40
    assert [dataset[i][1] for i in range(5)] == [0, 0, 0, 1, 1]
    red, _ = dataset[0]
    assert red.shape == (3, 40, 40)
    assert torch.equal(red[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_folder_resized_to_gray(image_tree):
    dataset = data.load_dataset("folder", data_dir=image_tree, image_size=16, channels=1)
    red, _ = dataset[0]
    assert red.shape == (1, 16, 16) and dataset.channels == 1 and dataset.image_size == 16
    assert torch.allclose(red, torch.full_like(red, 76 / 127.5 - 1), atol=1e-6)  # PIL's gray of red
    images, labels = data.load_tensors("folder", data_dir=image_tree, image_size=16, channels=1, progress=False)
    assert images.shape == (5, 1, 16, 16) and labels.tolist() == [0, 0, 0, 1, 1]
    assert torch.equal(images, torch.stack([dataset[i][0] for i in range(5)]))
    assert torch.allclose(images[3], torch.ones(1, 16, 16), atol=1e-6)  # white, resized: float rounding only
    assert torch.allclose(images[4], -torch.ones(1, 16, 16), atol=1e-6)  # black
    assert images.min().item() >= -1.0 and images.max().item() <= 1.0


def test_folder_of_gray_images_has_one_channel(tmp_path):
    for cls in ("a", "b"):
        save_png(tmp_path / "gray" / cls / "0.png", 128, size=(10, 10), mode="L")
    dataset = data.load_dataset("folder", data_dir=tmp_path / "gray")
    assert dataset.channels == 1 and dataset[0][0].shape == (1, 10, 10)
    assert dataset[0][0][0, 0, 0].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)


def test_limit_spreads_over_classes(image_tree):
    _, labels = data.load_tensors("folder", data_dir=image_tree, limit=2, progress=False)
    assert labels.tolist() == [0, 1]


def test_folder_with_train_and_test_splits(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            save_png(tmp_path / "tree" / split / cls / "0.png", (0, 0, 0), size=(8, 8))
    save_png(tmp_path / "tree" / "test" / "b" / "1.png", (0, 0, 0), size=(8, 8))
    test = data.load_dataset("folder", data_dir=tmp_path / "tree", train=False)
    assert test.source == tmp_path / "tree" / "test" and len(test) == 3 and test.classes == ["a", "b"]
    assert len(data.load_dataset("folder", data_dir=tmp_path / "tree")) == 2
    shutil.rmtree(tmp_path / "tree" / "test")
    with pytest.raises(DatasetUnavailableError, match="has no test/"):
        data.load_dataset("folder", data_dir=tmp_path / "tree", train=False)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="'folder' needs data_dir="):
        data.load_dataset("folder")
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        data.load_dataset("folder", data_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetUnavailableError, match="no class subfolders with images in"):
        data.load_dataset("folder", data_dir=tmp_path / "empty")
    save_png(tmp_path / "flat" / "0.png", (0, 0, 0))  # images but no class folders
    with pytest.raises(DatasetUnavailableError, match="no class subfolders with images in"):
        data.load_dataset("folder", data_dir=tmp_path / "flat")


# --------------------------------------------------------------------------------------
# CIFAR-10 from JPEG archives and folders
# --------------------------------------------------------------------------------------


def test_prepare_cifar10_jpg_unpacks_once(tmp_path):
    archive = make_cifar_tar(tmp_path / "tiny.tar.gz", tmp_path)
    root = tmp_path / "root"
    dest = data.prepare_cifar10_jpg(archive, root)
    assert dest == root / "cifar10-jpg"
    assert sorted(p.name for p in (dest / "train").iterdir()) == ["airplane", "cat"]
    assert len(list((dest / "test" / "truck").glob("*.jpg"))) == 2
    assert os.listdir(root) == ["cifar10-jpg"]  # no half-unpacked temporary folder left
    archive.unlink()
    assert data.prepare_cifar10_jpg(archive, root) == dest  # already there: the archive is not needed


def test_load_cifar10_falls_back_to_the_jpg_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(tv_datasets.CIFAR10, "download", lambda self: pytest.fail("download attempted"))
    root = tmp_path / "root"
    data.prepare_cifar10_jpg(make_cifar_tar(tmp_path / "tiny.tar.gz", tmp_path), root)
    test = data.load_dataset("cifar10", root=root, train=False)
    assert test.source == root / "cifar10-jpg" / "test"
    assert test.classes == list(data.CIFAR10_CLASSES)  # canonical labels, whatever folders exist
    assert [test[i][1] for i in range(len(test))] == [3, 9, 9]  # cat, truck, truck
    image, _ = test[0]
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    images, labels = data.load_tensors("cifar10", root=root, image_size=16, channels=1, progress=False)
    assert images.shape == (5, 1, 16, 16) and labels.tolist() == [0, 0, 0, 3, 3]


def test_load_cifar10_unpacks_the_known_archive_itself(monkeypatch, tmp_path):
    archive = make_cifar_tar(tmp_path / "tiny.tar.gz", tmp_path)
    monkeypatch.setenv(data.CIFAR10_JPG_ENV, str(archive))
    root = tmp_path / "root"
    assert len(data.load_dataset("cifar10", root=root)) == 5
    assert (root / "cifar10-jpg" / "train" / "airplane").is_dir()


def test_cifar10_data_dir_variants(tmp_path):
    archive = make_cifar_tar(tmp_path / "tiny.tar.gz", tmp_path)
    root = tmp_path / "root"
    assert len(data.load_dataset("cifar10", data_dir=archive, root=root, train=False)) == 3
    class_folders = root / "cifar10-jpg" / "train"  # class folders directly, no split
    dataset = data.load_dataset("cifar10", data_dir=class_folders, root=tmp_path / "other")
    assert len(dataset) == 5 and dataset.source == class_folders


def test_cifar10_refuses_foreign_class_folders(tmp_path):
    save_png(tmp_path / "zoo" / "unicorn" / "0.png", (0, 0, 0), size=(32, 32))
    with pytest.raises(DatasetUnavailableError, match="not among"):
        data.load_dataset("cifar10", data_dir=tmp_path / "zoo")


def test_known_archive_name_is_checked_by_sha256(tmp_path):
    impostor = make_cifar_tar(tmp_path / data.CIFAR10_JPG_NAME, tmp_path)
    with pytest.raises(DatasetUnavailableError, match="sha256 .* expected " + data.CIFAR10_JPG_SHA256):
        data.prepare_cifar10_jpg(impostor, tmp_path / "root")
    assert not (tmp_path / "root" / "cifar10-jpg").exists()


def test_archive_with_a_top_folder_is_unwrapped(tmp_path):
    archive = make_cifar_tar(tmp_path / "wrapped.tgz", tmp_path, wrapper="cifar10-jpg")
    dest = data.prepare_cifar10_jpg(archive, tmp_path / "root")
    assert (dest / "train" / "cat").is_dir() and (dest / "test").is_dir()


def test_archive_members_outside_the_folder_are_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload.jpg"
    payload.write_bytes(b"x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../escaped.jpg")
    target = tmp_path / "deep" / "root"
    with pytest.raises(DatasetUnavailableError, match="cannot unpack"):
        data.unpack_image_archive(evil, target / "out")
    assert not (target / "escaped.jpg").exists() and not (target / "out").exists()
    assert [p.name for p in target.iterdir()] == []  # the temporary folder is gone too


def test_truncated_archive_is_reported_and_leaves_nothing(tmp_path):
    archive = make_cifar_tar(tmp_path / "tiny.tar.gz", tmp_path)
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(DatasetUnavailableError, match="cannot unpack .*copy the archive again"):
        data.prepare_cifar10_jpg(archive, tmp_path / "root")
    assert os.listdir(tmp_path / "root") == []


def test_folder_archive_is_unpacked_under_the_root(tmp_path):
    archive = make_cifar_tar(tmp_path / "pics.tar.gz", tmp_path)
    dataset = data.load_dataset("folder", data_dir=archive, root=tmp_path / "root", train=False)
    assert dataset.classes == ["cat", "truck"] and dataset.source == tmp_path / "root" / "pics" / "test"


def test_real_cifar10_archive(repo_root, tmp_path):
    archive = Path(repo_root).parent / "shared" / "data" / data.CIFAR10_JPG_NAME
    if not archive.is_file():
        pytest.skip(f"{archive} is not here")
    assert data.sha256_file(archive) == data.CIFAR10_JPG_SHA256
    pattern = re.compile(r"^(train|test)/(" + "|".join(data.CIFAR10_CLASSES) + r")/\d{4}\.jpg$")
    tree = tmp_path / "few"
    with tarfile.open(archive, "r:gz") as tar:  # stream just the first few members, not all 60,000
        members = []
        for member in tar:
            if member.isfile():
                assert pattern.match(member.name), member.name
                tar.extract(member, tree, filter="data")
                members.append(member.name)
            if len(members) == 6:
                break
    split = members[0].split("/")[0]
    dataset = data.load_dataset("cifar10", data_dir=tree, train=split == "train")
    assert len(dataset) == 6
    images, labels = data.dataset_tensors(dataset, progress=False)
    assert images.shape == (6, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    expected = [data.CIFAR10_CLASSES.index(name.split("/")[1]) for name in sorted(members)]
    assert labels.tolist() == expected


# --------------------------------------------------------------------------------------
# The real Fashion-MNIST from Debian's package
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_fmnist_root(tmp_path_factory):
    """A data root holding the real Fashion-MNIST, copied once per session from Debian's package."""
    if not HAVE_REAL_FMNIST:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    root = tmp_path_factory.mktemp("real-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(data.FMNIST_DIR_ENV, str(REAL_FMNIST))
        patch.setattr(tv_datasets.FashionMNIST, "download", lambda self: pytest.fail("download attempted"))
        data.load_dataset("fashion-mnist", root=root)
    return root


@needs_real_fmnist
def test_real_fashion_mnist_items(real_fmnist_root):
    train = data.load_dataset("fashion-mnist", root=real_fmnist_root)
    test = data.load_dataset("fashion-mnist", root=real_fmnist_root, train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.classes == list(data.FASHION_MNIST_CLASSES) and train.channels == 1 and train.image_size == 28
    for index in (0, 59999):
        image, label = train[index]
        assert image.shape == (1, 28, 28) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1 and 0 <= label <= 9 and isinstance(label, int)
    tv = tv_datasets.FashionMNIST(str(real_fmnist_root), train=False, download=False)
    assert torch.equal(test[17][0][0], tv.data[17].float() / 127.5 - 1) and test[17][1] == int(tv.targets[17])


@needs_real_fmnist
def test_real_fashion_mnist_tensors(real_fmnist_root):
    images, labels = data.load_tensors("fashion-mnist", root=real_fmnist_root)
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (60000,) and labels.dtype == torch.long
    assert images.min().item() == -1.0 and images.max().item() == 1.0
    assert labels.bincount().tolist() == [6000] * 10
    _, test_labels = data.load_tensors("fashion-mnist", root=real_fmnist_root, train=False)
    assert test_labels.bincount().tolist() == [1000] * 10
    stats = data.dataset_stats(images)
    assert stats["count"] == 60000 and stats["min"] == -1.0 and stats["max"] == 1.0
    assert -0.5 < stats["mean"] < -0.35 and 0.6 < stats["std"] < 0.75  # mostly dark background


@needs_real_fmnist
def test_real_fashion_mnist_resized_to_32_rgb(real_fmnist_root):
    native, labels = data.load_tensors("fashion-mnist", root=real_fmnist_root, limit=100)
    images, same_labels = data.load_tensors(
        "fashion-mnist", root=real_fmnist_root, limit=100, image_size=32, channels=3
    )
    assert images.shape == (100, 3, 32, 32) and torch.equal(labels, same_labels)
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    reference = F.interpolate(native, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(images[:, :1], reference, atol=1e-5)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def test_cli_prepare_default_dataset(fake_fmnist, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(data.FMNIST_DIR_ENV, str(fake_fmnist[0]))
    assert data.main(["prepare", "--root", str(tmp_path / "root")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fashion-mnist ready: 12 train + 5 test images, 28x28, 1 channel(s), 10 classes")
    assert str(tmp_path / "root" / "FashionMNIST" / "raw") in out


def test_cli_prepare_cifar10_archive_and_folder(tmp_path, image_tree, capsys):
    archive = make_cifar_tar(tmp_path / "tiny.tar.gz", tmp_path)
    assert data.main(["prepare", "cifar10", "--archive", str(archive), "--root", str(tmp_path / "root")]) == 0
    assert "cifar10 ready: 5 train + 3 test images" in capsys.readouterr().out
    assert data.main(["prepare", "folder", "--data-dir", str(image_tree)]) == 0
    assert "folder ready: 5 train images, 40x40" in capsys.readouterr().out


def test_cli_prepare_offline_exits_2_with_one_line(tmp_path, capsys):
    assert data.main(["prepare", "mnist", "--root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: mnist is not on this machine") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and captured.out == ""
    assert data.main(["prepare", "imagenet"]) == 2
    assert "choose one of: mnist, fashion-mnist, cifar10, folder" in capsys.readouterr().err


def test_cli_runs_as_a_module(tmp_path):
    missing = tmp_path / "missing"
    result = subprocess.run(
        [sys.executable, "-m", "diffusion_course.data", "prepare", "folder", "--data-dir", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: folder: data_dir {missing} does not exist; check the path"
