"""Class conditioning end to end: train --conditioning class, the checkpoint's record, previews with a
column per class, the pipeline's class labels and guidance, sample/evaluate --class-id --guidance,
and bad input (exit code 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_course import sample as sample_cli
from diffusion_course.checkpoint import load_checkpoint, save_checkpoint
from diffusion_course.guidance import class_guidance
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.sampling import sample, sdedit
from diffusion_course.train import main as train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN = ["--dataset", "fashion-mnist", "--limit", "32", "--batch-size", "8", "--timesteps", "100",
       "--no-progress", "--device", "cpu", "--prediction", "eps"]  # fmt: skip
# (eps: an untrained x0-model's output is nearly the same for every label, see the runs fixture)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A class-conditional run (2 steps, a preview of 20 images) and an unconditional one (1 step).

    Two steps leave the U-Net's zero-initialised layers (the second conv of every residual block, the
    attention projections) near zero, so the class label barely reaches the output. Random values in
    them make every label and every guidance scale change the images, so a lost label or scale shows.
    """
    root = tmp_path_factory.mktemp("runs")
    assert train([*RUN, "--conditioning", "class", "--cond-drop", "0.2", "--max-steps", "2", "--sample-every", "2",
                  "--sample-count", "20", "--sample-steps", "3", "--out", str(root / "class")]) == 0
    assert train([*RUN, "--max-steps", "1", "--sample-every", "0", "--out", str(root / "plain")]) == 0
    path = root / "class" / "checkpoint.pt"
    state = load_checkpoint(path)
    gen = torch.Generator().manual_seed(0)
    for name, value in state["ema"]["weights"].items():
        if value.ndim >= 2 and value.abs().max() < 1e-3:
            state["ema"]["weights"][name] = state["model"][name] = 0.05 * torch.randn(value.shape, generator=gen)
    save_checkpoint(state, path)
    return root


def test_the_checkpoint_records_class_conditioning_and_the_preview_has_a_column_per_class(runs):
    state = load_checkpoint(runs / "class" / "checkpoint.pt")
    assert state["diffusion_config"]["conditioning"] == "class" and state["diffusion_config"]["num_classes"] == 10
    assert state["model_config"]["num_classes"] == 10 and state["config"]["cond_drop"] == 0.2
    assert state["model"]["class_embed.weight"].shape[0] == 11  # ten classes and the learned null label
    grid = Image.open(runs / "class" / "samples" / "step_0000002.png")
    assert grid.size == (10 * 30 + 2, 2 * 30 + 2)  # 20 previews, classes 0..9 in turn: 10 columns, 2 rows


def _manual(pipe, labels, w, seed, sizes):
    """What generate() should do, by hand: the guidance wrapper and sample(), batch after batch."""
    gen = torch.Generator().manual_seed(seed)
    out, start = [], 0
    for n in sizes:
        model = class_guidance(pipe.model, labels[start : start + n], w, 10)
        out.append(sample(model, pipe.schedule, (n, 1, 28, 28), sampler="ddim", steps=3, generator=gen,
                          prediction_type=pipe.diffusion.prediction))
        start += n
    return torch.cat(out)


def test_the_pipeline_draws_the_requested_classes_with_guidance_as_by_hand(runs):
    pipe = DiffusionPipeline.from_checkpoint(runs / "class" / "checkpoint.pt")
    assert pipe.num_classes == 10 and pipe.class_names[7] == "Sneaker"
    labels = torch.tensor([3, 1, 4, 1, 5])
    ours = pipe.generate(5, steps=3, seed=2, batch_size=2, class_labels=labels, guidance=3.0)
    assert torch.equal(ours, _manual(pipe, labels, 3.0, 2, (2, 2, 1)))
    one_class = pipe.generate(2, steps=3, seed=2, class_labels=7, guidance=2.0)
    assert torch.equal(one_class, _manual(pipe, torch.tensor([7, 7]), 2.0, 2, (2,)))
    plain = pipe.generate(2, steps=3, seed=2, class_labels=7)  # no guidance: the conditional model (w = 1)
    assert torch.equal(plain, _manual(pipe, torch.tensor([7, 7]), 1.0, 2, (2,)))
    assert (plain - one_class).abs().max() > 0.05  # the label and the scale matter in this model
    assert (plain - pipe.generate(2, steps=3, seed=2, class_labels=6)).abs().max() > 0.05


def test_the_pipeline_edits_and_inpaints_towards_a_class(runs):
    pipe = DiffusionPipeline.from_checkpoint(runs / "class" / "checkpoint.pt")
    images = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.equal(pipe.edit(images, 0.0, class_labels=3), images)
    edited = pipe.edit(images, 0.3, steps=3, class_labels=3, guidance=2.0, seed=4)
    by_hand = sdedit(class_guidance(pipe.model, torch.tensor([3, 3]), 2.0, 10), pipe.schedule, images, 0.3, steps=3,
                     generator=torch.Generator().manual_seed(4), prediction_type=pipe.diffusion.prediction)
    assert torch.equal(edited, by_hand) and not torch.equal(edited, images)
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., :14] = 1
    filled = pipe.inpaint(images, mask, steps=3, class_labels=[3, 4], guidance=2.0, resample=2)
    assert torch.equal(filled[..., :14], images[..., :14])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(class_labels=10), "class id 10 is out of range: this model knows classes 0 to 9"),
        (dict(class_labels=[-1, 2, 3]), "class id -1 is out of range"),
        (dict(class_labels=[1, 2]), r"give one class id, or one per image \(3\), not 2"),
        (dict(class_labels=1.5), "class labels must be integers"),
        (dict(guidance=2.0), "guidance needs a condition to steer towards: give class labels"),
        (dict(class_labels=1, guidance=-0.5), "guidance scale must be a number >= 0"),
    ],
)
def test_bad_requests_to_a_class_conditional_pipeline_are_named(runs, kwargs, message):
    pipe = DiffusionPipeline.from_checkpoint(runs / "class" / "checkpoint.pt")
    with pytest.raises(ValueError, match=message):
        pipe.generate(3, steps=2, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(class_labels=1), "trained with conditioning 'none'; it takes no class labels"),
        (dict(guidance=3.0), "guidance needs a conditional model"),
    ],
)
def test_an_unconditional_pipeline_refuses_classes_and_guidance(runs, kwargs, message):
    pipe = DiffusionPipeline.from_checkpoint(runs / "plain" / "checkpoint.pt")
    with pytest.raises(ValueError, match=message):
        pipe.generate(2, steps=2, **kwargs)


# ---------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------


def _sample(runs, tmp_path, *args, run="class"):
    return sample_cli.main(["--checkpoint", str(runs / run / "checkpoint.pt"), "--steps", "2", "--no-progress",
                            "--device", "cpu", "--out", str(tmp_path / "g.png"), "--save-npz",
                            str(tmp_path / "g.npz"), *args])


def test_sample_draws_one_class_with_guidance(runs, tmp_path, capsys):
    assert _sample(runs, tmp_path, "--class-id", "5", "--guidance", "3", "--num-samples", "4") == 0
    saved = np.load(tmp_path / "g.npz")
    assert saved["images"].shape == (4, 28, 28, 1) and saved["labels"].tolist() == [5, 5, 5, 5]
    assert "class 5 Sandal; guidance w = 3" in capsys.readouterr().err
    pipe = DiffusionPipeline.from_checkpoint(runs / "class" / "checkpoint.pt")
    expected = pipe.generate(4, steps=2, class_labels=5, guidance=3.0)
    assert np.array_equal(saved["images"], ((expected + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1))


@pytest.mark.parametrize("ids, labels, columns", [(["all"], list(range(10)) * 2, 10), (["1", "3"], [1, 3] * 10, 2)])
def test_sample_draws_several_classes_in_turn_one_column_each(runs, tmp_path, ids, labels, columns):
    assert _sample(runs, tmp_path, "--class-id", *ids, "--num-samples", "20") == 0
    assert np.load(tmp_path / "g.npz")["labels"].tolist() == labels
    assert Image.open(tmp_path / "g.png").size[0] == columns * 30 + 2


def test_without_class_id_a_class_conditional_model_samples_unconditionally(runs, tmp_path, capsys):
    assert _sample(runs, tmp_path, "--num-samples", "2") == 0
    assert "unconditional (no --class-id)" in capsys.readouterr().err
    assert "labels" not in np.load(tmp_path / "g.npz")


@pytest.mark.parametrize(
    "run, args, message",
    [
        ("class", ["--class-id", "10"], "--class-id 10 is out of range: this model knows classes 0 to 9 (0 T-shirt"),
        ("class", ["--class-id", "2", "-1"], "--class-id -1 is out of range"),
        ("class", ["--class-id", "sneaker"], "--class-id takes class numbers"),
        ("class", ["--class-id", "all", "3"], "--class-id takes class numbers"),
        ("class", ["--guidance", "3"], "--guidance needs --class-id"),
        ("class", ["--class-id", "1", "--guidance", "-1"], "--guidance must be a number >= 0"),
        ("class", ["--class-id", "1", "--guidance", "nan"], "--guidance must be a number >= 0"),
        ("plain", ["--class-id", "1"], "--class-id is for class-conditional models; this one was trained with "
                                       "conditioning 'none'"),
        ("plain", ["--guidance", "2"], "--guidance is for conditional models; this one is unconditional"),
    ],
)
def test_bad_class_or_guidance_input_is_one_line_and_exit_code_2(runs, tmp_path, capsys, run, args, message):
    assert _sample(runs, tmp_path, *args, run=run) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "g.png").exists()


def test_the_sample_command_exits_2_in_a_real_process(runs, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffusion_course.sample", "--checkpoint",
                           str(runs / "plain" / "checkpoint.pt"), "--class-id", "5", "--guidance", "3.0", "--out",
                           str(tmp_path / "x.png"), "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "--class-id" in proc.stderr


def test_evaluate_reports_class_accuracy_for_class_ids(runs, tmp_path, monkeypatch, capsys):
    """The evaluate path with --class-id all on a stand-in classifier (the real one trains for minutes)."""
    from diffusion_course import evaluate, features
    from diffusion_course.classifier import ClassifierConfig, ImageClassifier

    torch.manual_seed(0)
    stand_in = features.ClassifierFeatures(ImageClassifier(ClassifierConfig()), "fashion-mnist", "test", 0.5)
    monkeypatch.setattr(features, "get_extractor", lambda *a, **k: stand_in)
    monkeypatch.setattr(features, "_cache_dir", lambda root: tmp_path / "features")
    report = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(runs / "class" / "checkpoint.pt"), "--num-samples", "10", "--steps",
                          "2", "--real", "16", "--class-id", "all", "--guidance", "2", "--out", str(tmp_path / "e.png"),
                          "--json", str(report), "--no-progress", "--device", "cpu"]) == 0
    assert "class accuracy" in capsys.readouterr().out
    numbers = json.loads(report.read_text())
    assert numbers["class_id"] == "all" and numbers["guidance"] == 2.0
    assert 0.0 <= numbers["class_accuracy"] <= 1.0
