"""The sample and evaluate commands: images from a Phase-3 checkpoint, offline; bad input exits 2."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_course import sample as sample_cli
from diffusion_course.checkpoint import load_checkpoint, save_checkpoint
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.train import main as train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real (tiny, barely trained) Fashion-MNIST run of the train command, T = 100."""
    out = tmp_path_factory.mktemp("run")
    args = ["--dataset", "fashion-mnist", "--limit", "32", "--batch-size", "8", "--timesteps", "100",
            "--max-steps", "2", "--sample-every", "0", "--no-progress", "--device", "cpu", "--out", str(out)]
    assert train(args) == 0
    return out / "checkpoint.pt"


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sample_writes_a_grid_and_an_npz_and_leaves_the_checkpoint_alone(checkpoint, tmp_path):
    before = _digest(checkpoint)

    def run(name: str) -> np.ndarray:
        png, npz = tmp_path / f"{name}.png", tmp_path / f"{name}.npz"
        assert sample_cli.main(["--checkpoint", str(checkpoint), "--num-samples", "6", "--sampler", "ddim",
                                "--steps", "5", "--seed", "3", "--out", str(png), "--save-npz", str(npz),
                                "--batch-size", "4", "--no-progress", "--device", "cpu"]) == 0
        assert Image.open(png).size[0] > 28
        return np.load(npz)["images"]

    pixels = run("first")
    assert pixels.shape == (6, 28, 28, 1) and pixels.dtype == np.uint8
    assert np.array_equal(run("again"), pixels)  # same seed, same images
    assert _digest(checkpoint) == before


@pytest.mark.parametrize("sampler", ["ddpm", "dpm-solver++"])
def test_every_sampler_runs_from_the_command_line(checkpoint, tmp_path, sampler):
    assert sample_cli.main(["--checkpoint", str(checkpoint), "--num-samples", "2", "--sampler", sampler,
                            "--steps", "4", "--out", str(tmp_path / "s.png"), "--no-progress",
                            "--device", "cpu"]) == 0


def test_the_pipeline_matches_the_sampler_called_by_hand(checkpoint):
    from diffusion_course.sampling import sample

    pipe = DiffusionPipeline.from_checkpoint(checkpoint)
    assert pipe.image_shape == (1, 28, 28) and pipe.diffusion.timesteps == 100
    ours = pipe.generate(3, sampler="ddim", steps=4, seed=1, batch_size=8)
    gen = torch.Generator().manual_seed(1)
    by_hand = sample(pipe.model, pipe.schedule, (3, 1, 28, 28), sampler="ddim", steps=4, generator=gen,
                     prediction_type=pipe.diffusion.prediction)
    assert torch.equal(ours, by_hand)


def _run(args):
    return subprocess.run([sys.executable, "-m", "diffusion_course.sample", *args], capture_output=True, text=True,
                          timeout=120)


def test_bad_input_is_one_line_and_exit_code_2(checkpoint, tmp_path):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("hello")
    foreign = tmp_path / "foreign.pt"
    save_checkpoint({"weights": torch.zeros(2)}, foreign)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:5000])
    ok = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.png")]
    cases = [
        (["--checkpoint", str(tmp_path / "missing.pt")], "no such file"),
        (["--checkpoint", str(not_a_checkpoint)], "--checkpoint"),
        (["--checkpoint", str(corrupt)], "--checkpoint"),
        (["--checkpoint", str(foreign)], "not a model checkpoint"),
        ([*ok, "--steps", "101"], "--steps must be in [1, 100]"),
        ([*ok, "--steps", "0"], "--steps must be in [1, 100]"),
        ([*ok, "--eta", "-0.5"], "--eta must be in [0, 1]"),
        ([*ok, "--sampler", "dpm-solver++", "--eta", "0.5"], "--eta is only for --sampler ddim"),
        ([*ok, "--sampler", "ddpm", "--eta", "0"], "--eta is only for --sampler ddim"),
        (["--checkpoint", str(checkpoint), "--out", "/proc/nowhere/x.png"], "cannot write to --out"),
        (["--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.jpg")], "must end in .png"),
        ([*ok, "--num-samples", "0"], "--num-samples must be at least 1"),
        ([*ok, "--sampler", "euler"], "invalid choice"),
    ]
    before = _digest(checkpoint)
    for args, message in cases:
        proc = _run([*args, "--device", "cpu", "--no-progress"])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert len([line for line in lines if "error:" in line]) == 1, proc.stderr
    assert _digest(checkpoint) == before
    assert load_checkpoint(checkpoint)["step"] == 2


def test_evaluate_refuses_bad_input_with_exit_code_2(checkpoint, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffusion_course.evaluate", "--checkpoint", str(checkpoint),
                           "--num-samples", "2", "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--num-samples must be at least 4" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "diffusion_course.evaluate", "--checkpoint", str(checkpoint),
                           "--json", str(tmp_path / "r.txt"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "must end in .json" in proc.stderr


def test_evaluate_prints_every_number(checkpoint, tmp_path, monkeypatch, capsys):
    """The whole evaluate path on a stand-in classifier (the real one trains for minutes)."""
    from diffusion_course import evaluate, features
    from diffusion_course.classifier import ClassifierConfig, ImageClassifier

    torch.manual_seed(0)
    stand_in = features.ClassifierFeatures(ImageClassifier(ClassifierConfig()), "fashion-mnist", "test", 0.5)
    monkeypatch.setattr(features, "get_extractor", lambda *a, **k: stand_in)
    monkeypatch.setattr(features, "_cache_dir", lambda root: tmp_path / "features")
    report = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--num-samples", "8", "--steps", "3", "--real", "16",
                          "--out", str(tmp_path / "e.png"), "--json", str(report), "--no-progress",
                          "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for word in ("FID", "KID", "IS", "precision", "recall", "not with published Inception FIDs"):
        assert word in printed
    import json

    numbers = json.loads(report.read_text())
    assert numbers["num_samples"] == 8 and numbers["num_real"] == 16 and numbers["fid"] > 0
