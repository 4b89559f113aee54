"""Image-quality metrics computed from features: FID, KID, an Inception-Score analogue, precision/recall.

Every metric here starts from numbers a classifier already produced, so it runs offline and is
independent of which network made them (Inception-v3 for the published scores, a small classifier
in the course):

- features ``[N, D]`` (one row per image, e.g. D = 2048 Inception pool features) for FID, KID and
  precision/recall; real and generated sets may differ in N but must share D;
- class probabilities ``[N, K]`` (rows non-negative, summing to 1) for the Inception Score.

References, with the equations implemented:

- FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule..." (sec. 4, the Fréchet
  distance of Dowson & Landau 1982 between Gaussians fitted to the two feature sets).
- KID: Bińkowski et al. 2018, "Demystifying MMD GANs" (sec. 5 / appendix: unbiased MMD^2 with the
  cubic polynomial kernel, averaged over subsets); the unbiased estimator is Gretton et al. 2012, eq. 3.
- IS: Salimans et al. 2016, "Improved Techniques for Training GANs" (sec. 4, exp E_x KL(p(y|x) || p(y))).
- Precision/recall: Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
  Generative Models" (sec. 2, eqs. 1-3: manifolds as unions of k-NN balls).
- Sample-size bias: Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to
  find them" (FID_N is close to linear in 1/N).

Scalars come back as Python floats. FID and KID are computed in float64; precision/recall distances
in float32, in row blocks, so that N = M = 10,000 needs only ``block * N`` floats of memory at a time.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

Tensor = torch.Tensor


def _check_features(x: Tensor, name: str, min_rows: int = 2) -> Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] feature matrix, got shape {tuple(x.shape)}; flatten each sample")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} has {x.shape[0]} samples but at least {min_rows} are needed; pass more samples")
    if not x.is_floating_point():
        x = _float64(x)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the features (or the images) fed in")
    return x


def _float64(x: Tensor) -> Tensor:
    """``x`` in float64, moved to the CPU on Apple's MPS, which has no float64."""
    x = torch.as_tensor(x)
    return (x.cpu() if x.device.type == "mps" else x).double()


def _check_pair(a: Tensor, b: Tensor, min_rows: int = 2) -> tuple[Tensor, Tensor]:
    a, b = _check_features(a, "a", min_rows), _check_features(b, "b", min_rows)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has D={a.shape[1]} features but b has D={b.shape[1]}; use the same feature extractor")
    return a, b


# ---------------------------------------------------------------------------------------------- FID
def feature_statistics(features: Tensor, block: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64, denominator N - 1) of ``features [N, D]``.

    Two passes over row blocks (the mean first, then centred outer products) keep memory at
    ``block * D`` float64 values and avoid the cancellation of the one-pass ``E[x x^T] - mu mu^T``.
    """
    x = _check_features(features, "features")
    n = x.shape[0]
    mu = sum(_float64(chunk).sum(0) for chunk in x.split(block)) / n
    sigma = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=mu.device)
    for chunk in x.split(block):
        centred = _float64(chunk) - mu
        sigma += centred.T @ centred
    return mu, sigma / (n - 1)


def _psd_sqrt(sigma: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues become 0."""
    values, vectors = torch.linalg.eigh(sigma)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, sec. 4)::

        d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

    Shapes ``mu [D]``, ``sigma [D, D]`` (symmetric PSD); the result is >= 0, 0 for equal Gaussians.

    Why ``Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}``: write ``S1 S2 = A B`` with
    ``A = S1^{1/2}``, ``B = S1^{1/2} S2``. ``AB`` and ``BA = S1^{1/2} S2 S1^{1/2}`` have the same
    eigenvalues (true for any square A, B, even singular ones), and ``BA`` is symmetric PSD, so they are
    real and >= 0. The trace of the principal square root is the sum of the square roots of those
    eigenvalues, for both matrices. Unlike ``S1 S2``, which is not symmetric and whose general
    eigenvalue solver (or scipy's sqrtm) can return complex round-off, ``BA`` suits the stable
    symmetric solver ``eigh``, and tiny negative eigenvalues from round-off are clamped to 0.
    """
    mu1, sigma1, mu2, sigma2 = (_float64(t) for t in (mu1, sigma1, mu2, sigma2))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu2.shape != mu1.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"expected mu [D] and sigma [D, D] with one D, got mu1 {tuple(mu1.shape)}, sigma1 "
            f"{tuple(sigma1.shape)}, mu2 {tuple(mu2.shape)}, sigma2 {tuple(sigma2.shape)}"
        )
    if not all(torch.isfinite(t).all() for t in (mu1, sigma1, mu2, sigma2)):
        raise ValueError("the means or covariances contain NaN or infinite values; check the features")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    middle = (middle + middle.T) / 2  # exactly symmetric for eigh despite round-off
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(value), 0.0)  # a distance: only round-off can make it negative


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """FID between feature sets ``a [N, D]`` and ``b [M, D]`` (N, M >= 2); symmetric in a and b.

    Biased upwards at small N (see :func:`fid_with_bias`); compare FIDs only at equal N.
    """
    a, b = _check_pair(a, b)
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


class FIDEstimate(NamedTuple):
    """FID at the full sample size, at half of it, and extrapolated to infinitely many samples."""

    fid: float  # all of a and b
    fid_half: float  # random halves of a and b, averaged over the repeats
    fid_infinity: float  # 2 * fid - fid_half: the linear-in-1/N extrapolation
    n_a: int
    n_b: int

    @property
    def bias(self) -> float:
        """Estimated upward bias of ``fid``: ``fid - fid_infinity = fid_half - fid``."""
        return self.fid - self.fid_infinity


def fid_with_bias(a: Tensor, b: Tensor, repeats: int = 1, generator: torch.Generator | None = None) -> FIDEstimate:
    """FID at sample sizes N and N/2, and the bias-corrected ``FID_inf`` (Chong & Forsyth 2020, sec. 3).

    The plug-in FID is biased upwards: the trace term of finitely many samples overestimates the
    distance, by about ``k / N``, so ``FID_N ~ FID_inf + k / N`` (Chong & Forsyth, fig. 2). Two sample
    sizes determine the line: with ``FID_half`` from random halves of each set,
    ``FID_inf ~ 2 FID_N - FID_half`` and the bias of ``FID_N`` is about ``FID_half - FID_N``.

    Chosen over a bootstrap confidence interval because (1) a bootstrap resamples with replacement,
    and duplicated samples shrink the effective N, so it brackets an even more biased value rather
    than the truth; (2) it needs dozens of D x D matrix square roots, against ``1 + 2 * repeats``
    here. ``repeats`` > 1 averages several random halvings to reduce the variance of ``fid_half``.
    Needs at least 4 samples per set; ``generator`` makes the halves reproducible.
    """
    a, b = _check_pair(a, b, min_rows=4)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    fid = fid_from_features(a, b)
    halves = []
    for _ in range(repeats):
        half_a = a[_random_subset(a.shape[0], a.shape[0] // 2, generator, a.device)]
        half_b = b[_random_subset(b.shape[0], b.shape[0] // 2, generator, b.device)]
        halves.append(fid_from_features(half_a, half_b))
    fid_half = sum(halves) / repeats
    return FIDEstimate(fid, fid_half, 2 * fid - fid_half, a.shape[0], b.shape[0])


def _random_subset(n: int, size: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``size`` distinct indices out of ``range(n)``, drawn with ``generator`` (on its own device)."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=where)[:size].to(device)


# ---------------------------------------------------------------------------------------------- KID
def _unbiased_mmd2(x: Tensor, y: Tensor, degree: int, gamma: float, coef0: float) -> Tensor:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) of two equally sized samples, polynomial kernel."""
    m = x.shape[0]
    k_xx = (x @ x.T * gamma + coef0) ** degree
    k_yy = (y @ y.T * gamma + coef0) ** degree
    k_xy = (x @ y.T * gamma + coef0) ** degree
    # Dropping the diagonals k(x_i, x_i) is what makes the within-set averages unbiased.
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.mean()


def kid_from_features(
    a: Tensor,
    b: Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): ``(mean, std)`` of unbiased MMD^2 over subsets.

    Kernel ``k(x, y) = (gamma * x . y + coef0) ** degree`` with ``gamma = 1 / D`` by default, i.e. the
    paper's ``(x . y / D + 1)^3``. Each of ``subsets`` rounds draws ``m`` rows of ``a [N, D]`` and ``m``
    rows of ``b [M, D]`` without replacement (independently across rounds) with ``generator`` and
    computes the unbiased MMD^2. Rule for ``m``: ``m = min(subset_size, N, M)``, so small sets use all
    their samples (for N = M = m every round is the same: std 0); ``m >= 2`` is required.

    The mean is an unbiased estimate of MMD^2, so it can be slightly negative when the distributions
    agree; ``std`` is the population standard deviation over the subsets (spread, not standard error),
    as in the reference implementations. Computed in float64.
    """
    a, b = _check_pair(a, b)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    m = min(subset_size, a.shape[0], b.shape[0])
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    a, b = _float64(a), _float64(b)
    values = torch.stack(
        [
            _unbiased_mmd2(
                a[_random_subset(a.shape[0], m, generator, a.device)],
                b[_random_subset(b.shape[0], m, generator, b.device)],
                degree,
                gamma,
                coef0,
            )
            for _ in range(subsets)
        ]
    )
    return float(values.mean()), float(values.std(correction=0))


# ------------------------------------------------------------------------------------------------ IS
def inception_score_from_probs(probs: Tensor, splits: int = 10, atol: float = 1e-3) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016, sec. 4): ``exp(E_x KL(p(y|x) || p(y)))``, ``(mean, std)``.

    ``probs [N, K]``: class probabilities ``p(y|x)`` of N generated samples (softmax outputs; rows
    non-negative and summing to 1 within ``atol``). The rows are cut, in order, into ``splits`` groups
    of nearly equal size; each group uses its own marginal ``p(y)`` (the group's mean row), and the
    scores of the groups give the mean and the population std (as in the original code). The score
    lies in [1, K]: K when predictions are confident and the classes balanced, 1 when every sample
    gets the same prediction. With a classifier other than Inception-v3 this is an *Inception-Score
    analogue*, comparable only between models scored by the same classifier.
    """
    p = _float64(_check_features(probs, "probs", min_rows=1))
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be between 1 and the number of samples {p.shape[0]}, got {splits}")
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=atol, rtol=0):
        raise ValueError("probs must be non-negative with rows summing to 1; apply softmax to the logits first")
    scores = []
    for group in torch.tensor_split(p, splits):
        marginal = group.mean(0, keepdim=True)
        # KL(p || q) = sum p log p - p log q; xlogy makes 0 log 0 = 0 for classes a sample rules out.
        kl = (torch.xlogy(group, group) - torch.xlogy(group, marginal)).sum(1)
        scores.append(kl.mean().exp())
    values = torch.stack(scores)
    return float(values.mean()), float(values.std(correction=0))


# ---------------------------------------------------------------------------------- precision/recall
def _knn_radii2(x: Tensor, k: int, block: int) -> Tensor:
    """Squared distance from each row of ``x`` to its k-th nearest other row of ``x``."""
    # |r - c|^2 = |r|^2 + (|c|^2 - 2 r.c): rank the bracket, one fused matmul per block, add |r|^2 afterwards.
    # The k + 1 smallest include the point itself (distance 0), so the last of them is the k-th neighbour.
    norms = x.square().sum(1)
    radii = [
        torch.addmm(norms, rows, x.T, alpha=-2).topk(k + 1, dim=1, largest=False).values[:, -1] + rows.square().sum(1)
        for rows in x.split(block)
    ]
    return torch.cat(radii).clamp_(min=0)


def _coverage(manifold: Tensor, radii2: Tensor, queries: Tensor, block: int) -> float:
    """Fraction of ``queries`` inside at least one ball ``|q - m_i|^2 <= radii2_i`` (Kynkäänniemi eq. 1)."""
    # |q - m|^2 <= r^2  <=>  2 q.m + (r^2 - |m|^2) >= |q|^2: one fused matmul and a row maximum per block.
    offset = radii2 - manifold.square().sum(1)
    inside = [
        torch.addmm(offset, rows, manifold.T, alpha=2).amax(1) >= rows.square().sum(1) for rows in queries.split(block)
    ]
    return int(torch.cat(inside).sum()) / queries.shape[0]


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, block: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1-3), both in [0, 1].

    Each set's manifold is the union of balls around its samples, the radius of a ball being the
    distance to the sample's k-th nearest neighbour in the same set (k = 3 in the paper).
    ``precision``: fraction of ``fake [M, D]`` inside the real manifold (are samples realistic?);
    ``recall``: fraction of ``real [N, D]`` inside the fake manifold (is the variety covered?).
    Distances are float32 and computed ``block`` rows at a time, so memory stays at about
    ``block * max(N, M)`` floats; the cost is three matrix products, ``(N^2 + M^2 + N M) D``.
    """
    real, fake = _check_pair(real, fake, min_rows=k + 1)
    if k < 1 or block < 1:
        raise ValueError(f"k and block must be >= 1, got k={k}, block={block}")
    real, fake = real.float(), fake.float()
    precision = _coverage(real, _knn_radii2(real, k, block), fake, block)
    recall = _coverage(fake, _knn_radii2(fake, k, block), real, block)
    return precision, recall
