"""Feeding the model: a shuffled, sharded, resumable stream of batches.

A training step should never wait for data. Fashion-MNIST (60,000 x 28 x 28) takes 190 MB
as float32 and CIFAR-10 600 MB, so the fastest pipeline is no pipeline: the whole dataset is
one tensor on the training device and a batch is one indexing operation. Only image folders
too large for memory are read by DataLoader workers into pinned memory.

Both paths share one *order*. Epoch ``e`` shuffles with ``randperm(N)`` seeded by
``seed + e`` (what PyTorch's DistributedSampler does), each of the ``K`` processes of a
distributed run takes every K-th index, and the shard is cut into batches. Because the
order is a pure function of ``(seed, epoch)``, a run's position in the stream is a single
number -- the count of micro-batches consumed -- which makes resuming exact and cheap.
"""

from __future__ import annotations

from typing import Any

import torch

from . import data
from .distributed import DistInfo

# ---------------------------------------------------------------------------


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: ``randperm(num_items)`` seeded with ``seed + epoch``.

    Every rank computes the same permutation, so nothing about the order needs saving.
    """
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_items, generator=generator)


class BatchStream:
    """An endless, resumable stream of micro-batches for one rank.

    Epoch ``e`` is :func:`epoch_permutation` cut into ``world_size`` interleaved shards
    (rank ``r`` takes positions ``r, r + K, r + 2K, ...``, like DistributedSampler), the
    shard is cut into batches of ``batch_size`` and the incomplete last batch dropped, so
    every rank runs the same number of steps. Micro-batch ``m`` of the stream is batch
    ``m % batches_per_epoch`` of epoch ``m // batches_per_epoch``.

    ``source`` is either ``(images, labels)`` tensors -- indexed directly on their device,
    the fastest path -- or a map-style Dataset read through a DataLoader with workers and
    pinned memory.
    """

    def __init__(
        self,
        source,
        batch_size: int,
        *,
        seed: int = 0,
        info: DistInfo | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.info = info or DistInfo()
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        if isinstance(source, tuple):
            self.images, self.labels = source
            self.dataset = None
            self.num_items = self.images.shape[0]
        else:
            self.images = self.labels = None
            self.dataset = source
            self.num_items = len(source)
        per_rank = self.num_items // self.info.world_size
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the dataset has {self.num_items} images, fewer than one batch of {batch_size} "
                f"per process ({self.info.world_size} process(es)); lower the batch size"
            )

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``, ``[batches_per_epoch * batch_size]``."""
        perm = epoch_permutation(self.num_items, self.seed, epoch)
        k = self.info.world_size
        mine = perm[self.info.rank : (self.num_items // k) * k : k]
        return mine[: self.batches_per_epoch * self.batch_size]

    def locate(self, micro_step: int) -> tuple[int, int]:
        """``(epoch, batch index within the epoch)`` of micro-batch ``micro_step``."""
        return divmod(micro_step, self.batches_per_epoch)

    def iterate(self, start: int = 0):
        """Yield ``(micro_step, images, labels)`` forever, starting at micro-batch ``start``."""
        micro = start
        while True:
            epoch, first = self.locate(micro)
            batches = self.shard(epoch).split(self.batch_size)[first:]
            if self.dataset is None:
                for idx in batches:
                    idx = idx.to(self.images.device)
                    yield micro, self.images[idx], self.labels[idx]
                    micro += 1
            else:
                # a private generator: otherwise each new DataLoader iterator draws its worker
                # seed from torch's global RNG, and a resumed run would drift from a straight one
                loader = torch.utils.data.DataLoader(
                    self.dataset,
                    batch_sampler=[b.tolist() for b in batches],
                    num_workers=self.num_workers,
                    pin_memory=self.pin_memory,
                    generator=torch.Generator().manual_seed(self.seed + epoch),
                )
                for images, labels in loader:
                    yield micro, images, labels
                    micro += 1


def dataset_statistics(images: torch.Tensor, name: str, classes=None) -> dict:
    """Plain-data summary stored in checkpoints: the dataset, its shape, the value
    statistics of :func:`diffusion_course.data.dataset_stats` and the class names."""
    return {
        "dataset": name,
        "channels": int(images.shape[1]),
        "image_size": int(images.shape[-1]),
        **data.dataset_stats(images),
        "classes": list(classes) if classes is not None else None,
    }


TENSOR_BUDGET_BYTES = 4 * 2**30
"""Datasets up to this size (as float32) are loaded as one tensor; larger ones stream."""


def load_training_data(
    config, device: torch.device, *, progress: bool = True
) -> tuple[Any, dict]:
    """Load ``config.dataset`` for training: ``(source, stats)`` for :class:`BatchStream`.

    ``config`` is a :class:`~diffusion_course.training.TrainConfig` (dataset, data_dir,
    image_size, limit are used).

    The built-in datasets (and a folder that fits in :data:`TENSOR_BUDGET_BYTES`) become one
    tensor, moved to the training device when it has room, so a training step never waits
    for a data loader. Larger folders stay a Dataset read by DataLoader workers.
    """
    kwargs = {"image_size": config.image_size, "data_dir": config.data_dir}
    dataset = data.load_dataset(config.dataset, train=True, **kwargs)
    classes = list(dataset.classes)
    if config.dataset == "folder":
        n = len(dataset) if config.limit is None else min(config.limit, len(dataset))
        size = dataset.image_size
        if n * dataset.channels * size * size * 4 > TENSOR_BUDGET_BYTES:
            if config.limit is not None:
                dataset = torch.utils.data.Subset(dataset, data.spread_indices(len(dataset), n).tolist())
            # statistics from an evenly spread sample: decoding every file twice is too slow
            whole = dataset.dataset if config.limit is not None else dataset
            sample, _ = data.dataset_tensors(whole, limit=512, progress=progress)
            stats = dataset_statistics(sample, config.dataset, classes)
            stats["count"] = n
            return dataset, stats
    images, labels = data.dataset_tensors(dataset, limit=config.limit, progress=progress)
    stats = dataset_statistics(images, config.dataset, classes)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() * 4 < 0.25 * free:
            images, labels = images.to(device), labels.to(device)
    elif device.type != "cpu":
        images, labels = images.to(device), labels.to(device)
    return (images, labels), stats


__all__ = [
    "TENSOR_BUDGET_BYTES",
    "BatchStream",
    "dataset_statistics",
    "epoch_permutation",
    "load_training_data",
]
