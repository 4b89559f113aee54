"""The command line: ``python -m diffusion_course.data prepare [name]``.

``prepare`` makes a dataset ready to load offline -- copied, unpacked or downloaded into the
data root by :mod:`~diffusion_course.data.preparing` -- then reads both splits back with
:func:`~diffusion_course.data.load_dataset` to prove it, and says where they are. ``make
lab`` runs it for the default dataset. It exits 2 with a one-line error when it cannot.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .catalog import DATASETS, DEFAULT_DATASET, check_dataset_name
from .preparing import CIFAR10_JPG_NAME, default_data_root, prepare_cifar10_jpg
from .reading import CourseDataset, load_dataset


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
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_course.data", description="Datasets as float tensors in [-1, 1], offline first."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="make a dataset ready offline and say where it is")
    # Not argparse choices: check_dataset_name also takes other spellings (CIFAR-10) and says the fix itself.
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
