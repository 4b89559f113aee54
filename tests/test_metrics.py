"""Image-quality metrics on features: closed forms, independent numpy references, torchmetrics, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_course.metrics import (
    FIDEstimate,
    feature_statistics,
    fid_from_features,
    fid_with_bias,
    frechet_distance,
    inception_score_from_probs,
    kid_from_features,
    precision_recall,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    m = rng.normal(size=(d, d))
    return m @ m.T / d + 0.1 * np.eye(d)


def _numpy_frechet(mu1, s1, mu2, s2) -> float:
    """Independent route: eigenvalues of the non-symmetric product S1 S2 (general solver, complex round-off)."""
    eig = np.linalg.eigvals(s1 @ s2)
    trace_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


# ---------------------------------------------------------------------------------------------- FID
def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    got = frechet_distance(torch.tensor(mu1), torch.tensor(np.diag(s1)), torch.tensor(mu2), torch.tensor(np.diag(s2)))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_commuting_covariances():
    """S1 = Q A Q^T and S2 = Q B Q^T share eigenvectors, so Tr sqrt(S1 S2) = sum sqrt(a_i b_i)."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 2, size=6), rng.uniform(0.1, 2, size=6)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = np.zeros(6)
    expected = a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
    assert frechet_distance(*map(torch.tensor, (mu, s1, mu, s2))) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_non_commuting_2x2_closed_form():
    """For a 2x2 matrix M with eigenvalues l1, l2 >= 0: Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M))."""
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 0.5]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    m = s1 @ s2
    trace_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(*map(torch.tensor, (mu1, s1, mu2, s2))) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_non_commuting_matches_numpy_eigvals():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = _random_spd(16, rng), _random_spd(16, rng)
    expected = _numpy_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(*map(torch.tensor, (mu1, s1, mu2, s2))) == pytest.approx(expected, rel=1e-8)


def test_feature_statistics_match_numpy_and_do_not_depend_on_the_block():
    x = _gaussian(300, 5, seed=3) * torch.tensor([1.0, 2, 3, 4, 5]) + 100.0  # far from 0: tests the centring
    mu, sigma = feature_statistics(x.float())
    assert mu.dtype == sigma.dtype == torch.float64 and mu.shape == (5,) and sigma.shape == (5, 5)
    ref = x.float().double().numpy()
    np.testing.assert_allclose(mu.numpy(), ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(ref, rowvar=False), rtol=1e-9, atol=1e-12)  # N - 1
    mu7, sigma7 = feature_statistics(x.float(), block=7)
    torch.testing.assert_close(mu7, mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sigma7, sigma, rtol=1e-12, atol=1e-12)


def test_fid_from_features_matches_independent_route_even_with_singular_covariances():
    for n, d in ((400, 8), (20, 50)):  # the second has rank-deficient covariances (N < D)
        a, b = _gaussian(n, d, seed=4), _gaussian(n, d, seed=5, shift=0.3) * 1.5
        an, bn = a.numpy(), b.numpy()
        expected = _numpy_frechet(an.mean(0), np.cov(an, rowvar=False), bn.mean(0), np.cov(bn, rowvar=False))
        assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)


def test_fid_with_itself_is_zero_symmetric_and_grows_by_the_squared_shift():
    a, b = _gaussian(500, 64, seed=6), _gaussian(400, 64, seed=7) * 1.2
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-10)
    shift = torch.linspace(-1, 1, 64, dtype=torch.float64)
    assert fid_from_features(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-8)
    assert fid_from_features(a, b + shift) > fid_from_features(a, b)


def test_fid_with_bias_extrapolates_towards_the_true_value():
    """Same distribution, so the true FID is 0 and what FID_N shows is its upward bias."""
    a, b = _gaussian(2000, 32, seed=8), _gaussian(2000, 32, seed=9)
    est = fid_with_bias(a, b, repeats=3, generator=torch.Generator().manual_seed(0))
    assert isinstance(est, FIDEstimate) and (est.n_a, est.n_b) == (2000, 2000)
    assert est.fid == pytest.approx(fid_from_features(a, b))
    assert est.fid_half > est.fid > 0  # the bias shrinks as N grows ...
    assert est.fid_infinity == pytest.approx(2 * est.fid - est.fid_half)
    assert est.bias == pytest.approx(est.fid_half - est.fid)
    assert abs(est.fid_infinity) < 0.2 * est.fid  # ... roughly like 1/N, so the extrapolation removes most of it
    again = fid_with_bias(a, b, repeats=3, generator=torch.Generator().manual_seed(0))
    assert again == est


# ---------------------------------------------------------------------------------------------- KID
def _direct_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Gretton et al. 2012 eq. 3, literally: double sums over pairs, k(x, y) = (x.y / D + 1)^3."""
    m, d = x.shape
    k = lambda u, v: (u @ v / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_the_direct_formula_when_the_subset_is_the_whole_set():
    a, b = _gaussian(25, 6, seed=10), _gaussian(25, 6, seed=11, shift=0.5)
    mean, std = kid_from_features(a, b, subsets=3, subset_size=25)
    assert mean == pytest.approx(_direct_unbiased_mmd2(a.numpy(), b.numpy()), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set, reordered


def test_kid_is_unbiased_zero_in_expectation_for_one_distribution():
    """Averaged over many small independent samples, the unbiased MMD^2 estimate centres on 0."""
    estimates = [
        kid_from_features(_gaussian(20, 4, seed=2 * i), _gaussian(20, 4, seed=2 * i + 1), subsets=1, subset_size=20)[0]
        for i in range(300)
    ]
    mean, sem = np.mean(estimates), np.std(estimates) / math.sqrt(len(estimates))
    assert abs(mean) < 3 * sem


def test_kid_same_distribution_is_small_shifted_is_positive():
    g = torch.Generator().manual_seed(0)
    a, b, c = _gaussian(1000, 16, seed=12), _gaussian(1000, 16, seed=13), _gaussian(1000, 16, seed=14, shift=0.3)
    same_mean, same_std = kid_from_features(a, b, subsets=20, subset_size=300, generator=g)
    assert same_std > 0 and abs(same_mean) < same_std
    shifted_mean, shifted_std = kid_from_features(a, c, subsets=20, subset_size=300, generator=g)
    assert shifted_mean > 5 * shifted_std and shifted_mean > 10 * abs(same_mean)


def test_kid_is_reproducible_with_a_generator_and_clips_the_subset_size():
    a, b = _gaussian(60, 8, seed=15), _gaussian(50, 8, seed=16, shift=0.2)
    run = lambda seed, size: kid_from_features(a, b, subsets=5, subset_size=size, generator=torch.Generator().manual_seed(seed))  # noqa: E731, E501
    assert run(0, 30) == run(0, 30)
    assert run(0, 30) != run(1, 30)
    assert run(0, 1000) == run(0, 50)  # subset_size is clipped to min(len(a), len(b)) = 50


def test_kid_mean_and_std_are_over_the_subsets():
    """One generator driving single-subset calls draws the same subsets as one call with subsets=4."""
    a, b = _gaussian(60, 8, seed=25), _gaussian(50, 8, seed=26, shift=0.2)
    g = torch.Generator().manual_seed(3)
    singles = [kid_from_features(a, b, subsets=1, subset_size=20, generator=g)[0] for _ in range(4)]
    mean, std = kid_from_features(a, b, subsets=4, subset_size=20, generator=torch.Generator().manual_seed(3))
    assert len(set(singles)) == 4
    assert mean == pytest.approx(np.mean(singles), rel=1e-12)
    assert std == pytest.approx(np.std(singles), rel=1e-9)  # population std (ddof 0), as torchmetrics reports it


def test_kid_subsets_average_to_the_full_sample_estimate():
    """Both subsets are uniform draws, so the subset estimates average to the whole sets' unbiased MMD^2."""
    a = _gaussian(40, 4, seed=27)
    b = torch.cat([_gaussian(10, 4, seed=28, shift=2.0), _gaussian(30, 4, seed=29)])  # b's first rows stand out
    full = kid_from_features(a, b, subsets=1, subset_size=40)[0]
    mean, std = kid_from_features(a, b, subsets=2000, subset_size=10, generator=torch.Generator().manual_seed(0))
    assert mean == pytest.approx(full, abs=4 * std / math.sqrt(2000))


# ------------------------------------------------------------------------------------------------ IS
def test_inception_score_extremes():
    k, n = 10, 200
    confident = torch.eye(k)[torch.arange(n) % k]  # one-hot, every split sees each class equally often
    mean, std = inception_score_from_probs(confident, splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    constant = torch.softmax(torch.randn(k), 0).expand(n, k)
    assert inception_score_from_probs(constant, splits=4)[0] == pytest.approx(1.0, abs=1e-9)


def test_inception_score_matches_numpy_per_split():
    probs = torch.softmax(3 * torch.randn(91, 5, generator=torch.Generator().manual_seed(0)), 1)  # splits of 31, 30, 30
    p = probs.double().numpy()
    scores = []
    for group in np.array_split(p, 3):
        kl = (group * (np.log(group) - np.log(group.mean(0, keepdims=True)))).sum(1)
        scores.append(np.exp(kl.mean()))
    mean, std = inception_score_from_probs(probs, splits=3)
    assert mean == pytest.approx(np.mean(scores), rel=1e-6) and std == pytest.approx(np.std(scores), rel=1e-5)
    assert 1 < mean < 5


def test_inception_score_rejects_what_is_not_a_probability():
    with pytest.raises(ValueError, match="softmax"):
        inception_score_from_probs(torch.randn(20, 4), splits=2)
    with pytest.raises(ValueError, match="softmax"):
        inception_score_from_probs(torch.full((20, 4), 0.3), splits=2)
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_probs(torch.full((5, 4), 0.25), splits=10)


# ---------------------------------------------------------------------------------- precision/recall
def _numpy_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def dist(x, y):
        return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))

    r_real = np.sort(dist(real, real), axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    precision = (dist(fake, real) <= r_real[None, :]).any(1).mean()
    recall = (dist(real, fake) <= r_fake[None, :]).any(1).mean()
    return float(precision), float(recall)


def test_precision_recall_matches_a_direct_numpy_computation_in_any_block_size():
    real, fake = _gaussian(200, 8, seed=17).float(), _gaussian(150, 8, seed=18, shift=0.4).float() * 1.3
    expected = _numpy_precision_recall(real.double().numpy(), fake.double().numpy(), k=3)
    assert 0.2 < expected[0] < 0.8 and 0.8 < expected[1] < 1  # a case where the radii matter
    assert precision_recall(real, fake, k=3) == pytest.approx(expected, abs=1e-12)
    assert precision_recall(real, fake, k=3, block=7) == pytest.approx(expected, abs=1e-12)
    assert precision_recall(real, fake, k=5) == pytest.approx(_numpy_precision_recall(real.numpy(), fake.numpy(), 5))


def test_precision_recall_identical_and_disjoint_sets():
    x = _gaussian(300, 16, seed=19)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_when_the_fake_set_covers_half_of_the_modes():
    g = torch.Generator().manual_seed(20)
    angles = torch.arange(10) * (2 * math.pi / 10)
    centres = 50 * torch.stack([angles.cos(), angles.sin()], 1)  # 10 modes far apart in the plane
    real = centres[torch.arange(2000) % 10] + torch.randn(2000, 2, generator=g)
    fake = centres[torch.arange(2000) % 5] + torch.randn(2000, 2, generator=g)  # modes 0-4 only
    precision, recall = precision_recall(real, fake)
    assert precision > 0.95
    assert 0.4 < recall <= 0.5


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (torch.randn(10, 3, 4), torch.randn(10, 12), "2-D"),
        (torch.randn(10, 4), torch.randn(10, 5), "D=4.*D=5"),
        (torch.randn(1, 4), torch.randn(10, 4), "1 samples but at least"),
        (torch.full((10, 4), float("nan")), torch.randn(10, 4), "NaN"),
    ],
)
def test_bad_features_give_one_line_errors(a, b, match):
    for metric in (fid_from_features, kid_from_features, fid_with_bias, precision_recall):
        with pytest.raises(ValueError, match=match) as info:
            metric(a, b)
        assert "\n" not in str(info.value)


def test_frechet_distance_checks_shapes_and_values():
    with pytest.raises(ValueError, match="mu"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(torch.full((3,), float("nan")), torch.eye(3), torch.zeros(3), torch.eye(3))


def test_fid_of_a_set_with_itself_is_never_negative():
    """Round-off leaves about +-1e-14 of the trace terms; seeds 1, 2 and 4 would come out negative unclamped."""
    for seed in range(6):
        assert fid_from_features(_gaussian(500, 64, seed=seed), _gaussian(500, 64, seed=seed)) >= 0.0


# ------------------------------------------------------------------------------------------ torchmetrics
def test_fid_matches_torchmetrics():
    # torchmetrics exposes no public feature-level FID; _compute_fid(mu1, sigma1, mu2, sigma2) is its private core.
    fid_module = pytest.importorskip("torchmetrics.image.fid")
    a, b = _gaussian(600, 32, seed=21), _gaussian(500, 32, seed=22, shift=0.2) * 0.8
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    torch.testing.assert_close(s1, torch.cov(a.T))  # torchmetrics' own covariance convention (N - 1)
    theirs = float(fid_module._compute_fid(mu1, s1, mu2, s2))
    assert fid_from_features(a, b) == pytest.approx(theirs, rel=1e-8)


def test_kid_matches_torchmetrics():
    # torchmetrics' KernelInceptionDistance needs images; poly_mmd is its feature-level MMD^2 of one subset.
    kid_module = pytest.importorskip("torchmetrics.image.kid")
    a, b = _gaussian(80, 24, seed=23), _gaussian(80, 24, seed=24, shift=0.1)
    theirs = float(kid_module.poly_mmd(a, b))
    assert kid_from_features(a, b, subsets=2, subset_size=80)[0] == pytest.approx(theirs, rel=1e-10)
    theirs = float(kid_module.poly_mmd(a, b, degree=2, gamma=0.5, coef=0.3))
    ours = kid_from_features(a, b, subsets=2, subset_size=80, degree=2, gamma=0.5, coef0=0.3)[0]
    assert ours == pytest.approx(theirs, rel=1e-10)
