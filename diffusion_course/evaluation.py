"""How good are these samples? Every quality number of the course, computed one way.

:func:`evaluate_images` takes generated images, extracts features with the course classifier
(or Inception-v3 where it can be had, :mod:`diffusion_course.features`), compares them with the
cached features of the real test images, and returns a :class:`QualityReport`: FID (with its
sample-size bias), KID, the Inception-Score analogue, precision and recall, and the accuracy of
the requested classes for conditional models. The evaluate command, the benchmarks and the
notebooks all call it, so their numbers agree.

FID is biased upwards at small N, so compare FIDs only at equal N (and the same features);
:attr:`QualityReport.fid_infinity` is the linear-in-1/N extrapolation of Chong & Forsyth 2020.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from . import metrics


@dataclass
class QualityReport:
    """The numbers of one set of samples against the real test images (see the module docstring)."""

    features: str  # which feature space (the numbers are comparable only within one)
    num_samples: int
    num_real: int
    fid: float
    fid_half: float
    fid_infinity: float
    kid: float
    kid_std: float
    inception_score: float
    inception_score_std: float
    precision: float
    recall: float
    class_accuracy: float | None = None  # conditional models: fraction judged to be the class asked for

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The report as short lines for a terminal or a notebook."""
        out = [
            f"features: {self.features} (numbers comparable only on these features, not with published Inception FIDs)",
            f"FID  {self.fid:8.3f}  at N = {self.num_samples} vs {self.num_real} real "
            f"(at N/2: {self.fid_half:.3f}; extrapolated to N = inf: {self.fid_infinity:.3f})",
            f"KID  {self.kid:8.5f} +- {self.kid_std:.5f}",
            f"IS   {self.inception_score:8.3f} +- {self.inception_score_std:.3f}  "
            "(classifier analogue; 10 = every class, confidently)",
            f"precision {self.precision:.3f}   recall {self.recall:.3f}",
        ]
        if self.class_accuracy is not None:
            out.append(f"class accuracy {self.class_accuracy:.3f}")
        return out


def evaluate_images(
    images: torch.Tensor,
    dataset: str,
    *,
    extractor=None,
    real_limit: int | None = None,
    labels: torch.Tensor | None = None,
    seed: int = 0,
) -> QualityReport:
    """Score ``images`` ``[N, C, H, W]`` in [-1, 1] (N >= 4) against the test split of ``dataset``.

    ``extractor``: a feature extractor of :mod:`diffusion_course.features` (default: the course
    classifier of ``dataset``, trained once and cached). ``real_limit``: how many real test images
    (default: all). ``labels``: the classes the samples were asked to show (conditional models).
    """
    from .features import course_classifier, real_features

    if extractor is None:
        extractor = course_classifier(dataset)
    real = real_features(extractor, dataset, limit=real_limit)
    fake = extractor(images)
    gen = torch.Generator().manual_seed(seed)
    fid = metrics.fid_with_bias(fake, real, generator=gen)
    kid, kid_std = metrics.kid_from_features(fake, real, generator=gen)
    probs = extractor.probabilities(images)
    score, score_std = metrics.inception_score_from_probs(probs, splits=min(10, max(1, images.shape[0] // 10)))
    precision, recall = metrics.precision_recall(real, fake)
    class_accuracy = None
    if labels is not None:
        class_accuracy = float((probs.argmax(dim=1) == labels.cpu()).float().mean())
    return QualityReport(
        features=extractor.key, num_samples=images.shape[0], num_real=real.shape[0],
        fid=fid.fid, fid_half=fid.fid_half, fid_infinity=fid.fid_infinity, kid=kid, kid_std=kid_std,
        inception_score=score, inception_score_std=score_std, precision=precision, recall=recall,
        class_accuracy=class_accuracy,
    )


__all__ = ["QualityReport", "evaluate_images"]
