"""Feature spaces for measuring samples: the course's own classifier, or Inception-v3 when it can be had.

FID, KID, precision/recall and the Inception Score compare *features* of images, not pixels
(:mod:`diffusion_course.metrics`). Which features decides what the numbers mean:

- ``classifier`` (the default, offline): the penultimate layer of a small classifier the course
  trains on the dataset itself (:mod:`diffusion_course.classifier`), cached under ``data/`` with
  a fingerprint of what it was trained on. It knows what a sneaker looks like at 28x28.
- ``inception``: Inception-v3's 2048-dimensional pool features, as in the papers, through
  torchmetrics when it is installed *and* its weights can be downloaded (``pip install
  torchmetrics[image]``; about 100 MB once). Offline, asking for it prints one line and the
  classifier features are used instead.

**Numbers on the course's features are comparable with each other (same dataset, same
classifier), never with published Inception FIDs.** Say which features a number used.

Real-data features of the test split are computed once per (features, dataset, count) and
cached next to the classifier, keyed by the same fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .classifier import (
    ClassifierRecipe,
    ImageClassifier,
    accuracy,
    fingerprint,
    load_classifier,
    save_classifier,
    train_classifier,
)
from .runtime import note

EXTRACTORS = ("classifier", "inception")


class FeatureUnavailable(RuntimeError):
    """A feature extractor cannot be built here (no weights, no network, not trained yet)."""


class ClassifierFeatures:
    """The course classifier's penultimate activations: ``images [N, C, H, W] -> [N, D]`` float64."""

    name = "course-classifier"

    def __init__(self, model: ImageClassifier, dataset: str, trained_on: str, test_accuracy: float) -> None:
        self.model = model.eval()
        self.dataset = dataset
        self.trained_on = trained_on
        self.test_accuracy = test_accuracy
        self.dim = model.config.widths[-1]

    @property
    def key(self) -> str:
        """Names this feature space in caches and reports."""
        return f"{self.name}-{self.dataset}-{self.trained_on}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return self._batched(images, batch_size, self.model.features).double()

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Class probabilities ``[N, K]`` (for the Inception-Score analogue and class accuracy)."""
        return self._batched(images, batch_size, self.model).float().softmax(dim=1).double()

    def _batched(self, images: torch.Tensor, batch_size: int, fn) -> torch.Tensor:
        device = next(self.model.parameters()).device
        outs = [fn(images[i : i + batch_size].to(device).float()).cpu() for i in range(0, images.shape[0], batch_size)]
        return torch.cat(outs)


class InceptionFeatures:
    """Inception-v3 pool features (2048-D) through torchmetrics, on images resized to 299x299."""

    name = "inception-v3"
    dim = 2048

    def __init__(self, device: torch.device | str = "cpu") -> None:
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as err:
            raise FeatureUnavailable(
                "Inception features need torchmetrics with its image extra (pip install 'torchmetrics[image]')"
            ) from err
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048", "logits_unbiased"])
        except Exception as err:  # a download that fails raises many kinds of errors
            reason = f"{type(err).__name__}: offline?"
            raise FeatureUnavailable(f"Inception-v3 weights could not be loaded ({reason})") from err
        self.net = self.net.to(device).eval()
        self.device = torch.device(device)

    @property
    def key(self) -> str:
        return self.name

    def _uint8(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
        outs = [self.net(self._uint8(images[i : i + batch_size]).to(self.device))[0].cpu()
                for i in range(0, images.shape[0], batch_size)]
        return torch.cat(outs).double()

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
        outs = [self.net(self._uint8(images[i : i + batch_size]).to(self.device))[1].cpu()
                for i in range(0, images.shape[0], batch_size)]
        return torch.cat(outs).float().softmax(dim=1).double()


# ---------------------------------------------------------------------------
# Getting an extractor
# ---------------------------------------------------------------------------


def _cache_dir(root: Path | str | None) -> Path:
    from .data import default_data_root

    return Path(root) if root is not None else default_data_root() / "features"


def course_classifier(
    dataset: str = "fashion-mnist",
    *,
    device: torch.device | str = "cpu",
    root: Path | str | None = None,
    train: bool = True,
    recipe: ClassifierRecipe | None = None,
    progress: bool = True,
) -> ClassifierFeatures:
    """The course classifier of ``dataset``, from the cache or trained now (a few CPU minutes for
    the 28x28 sets; a GPU is advised for CIFAR-10). The cache file name holds a fingerprint of the
    training images and the recipe, so changed data never reuses a stale classifier."""
    from .data import load_tensors

    recipe = recipe or ClassifierRecipe(dataset=dataset)
    images, labels = load_tensors(dataset, train=True, progress=progress)
    trained_on = fingerprint(images, labels, recipe)
    path = _cache_dir(root) / f"classifier-{dataset}-{trained_on}.pt"
    if path.is_file():
        model, state = load_classifier(path)
        return ClassifierFeatures(model.to(device), dataset, trained_on, state["test_accuracy"])
    if not train:
        raise FeatureUnavailable(f"no trained classifier for {dataset} at {path}; run with train=True once")
    note(f"training the course's {dataset} classifier once (cached in {path.parent}) ...")
    model = train_classifier(images, labels, recipe, out=path.parent / f"run-{dataset}-{trained_on}",
                             device=device, progress=progress)
    test_images, test_labels = load_tensors(dataset, train=False, progress=progress)
    test_acc = accuracy(model, test_images, test_labels)
    save_classifier(model, path, trained_on=trained_on, test_accuracy=test_acc)
    note(f"{dataset} classifier: test accuracy {test_acc:.2%}")
    return ClassifierFeatures(model, dataset, trained_on, test_acc)


def get_extractor(
    name: str = "classifier", dataset: str = "fashion-mnist", *, device: torch.device | str = "cpu", **kwargs
) -> ClassifierFeatures | InceptionFeatures:
    """``classifier`` or ``inception`` (falling back to the classifier, with one line, where
    Inception cannot be had)."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown features {name!r}; choose one of: {', '.join(EXTRACTORS)}")
    if name == "inception":
        try:
            return InceptionFeatures(device)
        except FeatureUnavailable as err:
            note(f"note: {err}; using the course classifier's features instead (not comparable with published FIDs)")
    return course_classifier(dataset, device=device, **kwargs)


# ---------------------------------------------------------------------------
# Real-data features, computed once
# ---------------------------------------------------------------------------


def real_features(
    extractor, dataset: str, *, train: bool = False, limit: int | None = None,
    root: Path | str | None = None, progress: bool = False,
) -> torch.Tensor:
    """Features ``[N, D]`` of the real images of ``dataset`` (the test split by default; ``limit``
    images spread evenly over it), cached under ``data/features/`` by extractor and count."""
    from .data import load_tensors

    split = "train" if train else "test"
    path = _cache_dir(root) / f"real-{extractor.key}-{dataset}-{split}-{limit or 'all'}.pt"
    if path.is_file():
        return load_checkpoint(path)["features"]
    images, _ = load_tensors(dataset, train=train, limit=limit, progress=progress)
    features = extractor(images)
    save_checkpoint({"features": features, "extractor": extractor.key, "dataset": dataset, "split": split}, path)
    return features


@torch.no_grad()
def nearest_neighbours(
    queries: torch.Tensor, keys: torch.Tensor, batch_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``queries [M, D]``, its nearest row of ``keys [N, D]`` (Euclidean):
    ``(distances [M], indices [M])``. The memorisation check: a sample whose nearest training
    image (in feature space) is much closer than test images usually are is likely a copy."""
    keys = keys.double()
    key_sq = (keys**2).sum(dim=1)
    dists, idxs = [], []
    for start in range(0, queries.shape[0], batch_size):
        q = queries[start : start + batch_size].double()
        d2 = (q**2).sum(dim=1, keepdim=True) - 2 * q @ keys.T + key_sq[None, :]
        best, idx = d2.clamp(min=0).min(dim=1)
        dists.append(best.sqrt())
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


__all__ = [
    "EXTRACTORS",
    "ClassifierFeatures",
    "FeatureUnavailable",
    "InceptionFeatures",
    "course_classifier",
    "get_extractor",
    "nearest_neighbours",
    "real_features",
]
