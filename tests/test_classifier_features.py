"""The course classifier (trained by the one training loop) and the feature spaces built on it."""

from __future__ import annotations

import pytest
import torch

from diffusion_course import classifier, features
from diffusion_course.checkpoint import CheckpointError, save_checkpoint
from diffusion_course.trainer import Trainer
from diffusion_course.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy(n=96, seed=0):
    """Two classes a small CNN tells apart at once: bright left half vs bright right half."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 1, 8, 8, generator=g) * 0.6 - 0.8
    images[labels == 0, :, :, :4] += 1.0
    images[labels == 1, :, :, 4:] += 1.0
    return images.clamp(-1, 1), labels


def test_the_training_loop_trains_a_classifier(tmp_path):
    images, labels = _toy()
    torch.manual_seed(0)
    model = classifier.ImageClassifier(classifier.ClassifierConfig(in_channels=1, image_size=8, num_classes=2,
                                                                   widths=(8, 16)))
    config = TrainConfig(dataset="mnist", batch_size=16, lr=3e-3, max_steps=40, warmup_steps=5, ema_decay=0.9,
                         out=str(tmp_path), sample_every=0, checkpoint_every=0, log_every=10, progress=False,
                         num_workers=0, device="cpu")
    trainer = Trainer(config, model, (images, labels), objective=classifier.ClassificationObjective())
    result = trainer.train()
    assert result.history[-1]["accuracy"] > result.history[0]["accuracy"]
    test_images, test_labels = _toy(seed=1)
    assert classifier.accuracy(trainer.ema.module, test_images, test_labels) > 0.95
    assert trainer.preview() is None  # a classifier has no pictures to show


def test_noise_aware_classifier_sees_t():
    from diffusion_course.schedules import get_schedule

    model = classifier.ImageClassifier(classifier.ClassifierConfig(in_channels=1, image_size=8, num_classes=2,
                                                                   widths=(8, 16), time_conditioned=True))
    x = torch.randn(4, 1, 8, 8)
    a, b = model(x, torch.tensor([0, 0, 0, 0])), model(x, torch.tensor([900, 900, 900, 900]))
    assert a.shape == (4, 2) and not torch.allclose(a, b)
    objective = classifier.ClassificationObjective(noisy=True, schedule=get_schedule("linear", 1000))
    out = objective(model, x, torch.tensor([0, 1, 0, 1]), torch.Generator().manual_seed(0))
    assert out.loss.ndim == 0 and out.logs["accuracy"].shape == (4,)
    with pytest.raises(ValueError, match="needs the diffusion schedule"):
        classifier.ClassificationObjective(noisy=True)


def test_fingerprint_changes_with_data_and_recipe():
    images, labels = _toy()
    recipe = classifier.ClassifierRecipe(dataset="mnist")
    base = classifier.fingerprint(images, labels, recipe)
    assert base == classifier.fingerprint(images.clone(), labels.clone(), recipe)
    changed = images.clone()
    changed[0, 0, 0, 0] += 0.01
    assert classifier.fingerprint(changed, labels, recipe) != base
    assert classifier.fingerprint(images, labels, classifier.ClassifierRecipe(dataset="mnist", epochs=1)) != base


def test_save_and_load_round_trip(tmp_path):
    model = classifier.build_classifier("mnist", 1, 28, 10)
    path = classifier.save_classifier(model, tmp_path / "c.pt", trained_on="abc", test_accuracy=0.91)
    loaded, state = classifier.load_classifier(path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x)) and state["test_accuracy"] == 0.91
    save_checkpoint({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a classifier file"):
        classifier.load_classifier(tmp_path / "other.pt")


def test_course_classifier_is_trained_once_then_cached(tmp_path, monkeypatch):
    import diffusion_course.data as data

    images, labels = _toy()
    monkeypatch.setattr(data, "load_tensors",
                        lambda name, train=True, **kw: (images, labels) if train else _toy(seed=1))
    recipe = classifier.ClassifierRecipe(dataset="mnist", epochs=6, batch_size=16, lr=3e-3,
                                         overrides={"widths": (8, 16)})
    with pytest.raises(features.FeatureUnavailable, match="run with train=True"):
        features.course_classifier("mnist", root=tmp_path, train=False, recipe=recipe, progress=False)
    first = features.course_classifier("mnist", root=tmp_path, recipe=recipe, progress=False)
    assert first.test_accuracy > 0.95 and first.dim == 16
    cached = list(tmp_path.glob("classifier-mnist-*.pt"))
    assert len(cached) == 1 and first.trained_on in cached[0].name
    calls = []
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(features, "train_classifier", lambda *a, **k: calls.append(1))
    again = features.course_classifier("mnist", root=tmp_path, recipe=recipe, progress=False)
    assert not calls and torch.equal(again(images[:5]), first(images[:5]))
    feats = first(images)
    assert feats.shape == (96, 16) and feats.dtype == torch.float64
    probs = first.probabilities(images)
    assert torch.allclose(probs.sum(dim=1), torch.ones(96, dtype=torch.float64))
    real = features.real_features(first, "mnist", root=tmp_path)
    assert real.shape == (96, 16) and list(tmp_path.glob("real-course-classifier-mnist-*-test-all.pt"))


def test_inception_offline_falls_back_with_one_line(tmp_path, monkeypatch, capsys):
    def unavailable(device):
        raise features.FeatureUnavailable("Inception-v3 weights could not be loaded (offline?)")

    monkeypatch.setattr(features, "InceptionFeatures", unavailable)
    sentinel = object()
    monkeypatch.setattr(features, "course_classifier", lambda *a, **k: sentinel)
    assert features.get_extractor("inception", "mnist") is sentinel
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not comparable with published FIDs" in err[0]
    with pytest.raises(ValueError, match="unknown features 'clip'"):
        features.get_extractor("clip")


def test_inception_needs_its_package_or_weights():
    try:
        features.InceptionFeatures("cpu")
    except features.FeatureUnavailable as err:
        assert "torchmetrics" in str(err) or "weights" in str(err)


def test_nearest_neighbours_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    keys, queries = torch.randn(300, 5, generator=g), torch.randn(40, 5, generator=g)
    dist, idx = features.nearest_neighbours(queries, keys, batch_size=7)
    brute = torch.cdist(queries.double(), keys.double())
    assert torch.equal(idx, brute.argmin(dim=1))
    assert torch.allclose(dist, brute.min(dim=1).values, atol=1e-9)
    exact, where = features.nearest_neighbours(keys[:3], keys)
    assert torch.equal(where, torch.arange(3)) and exact.max() < 1e-6
