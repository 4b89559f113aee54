"""benchmarks/guidance.py in miniature: its pieces, and the whole sweep on tiny checkpoints and stand-in
classifiers (the real run trains for 2 x 15 minutes; its numbers are printed, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_script

from diffusion_course.train import main as train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "guidance.py"


@pytest.fixture(scope="module")
def bench():
    return load_script("guidance")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-runs")
    common = ["--dataset", "fashion-mnist", "--limit", "32", "--batch-size", "8", "--timesteps", "100",
              "--max-steps", "1", "--sample-every", "0", "--no-progress", "--device", "cpu"]
    assert train([*common, "--conditioning", "class", "--out", str(root / "class")]) == 0
    assert train([*common, "--out", str(root / "plain")]) == 0
    assert train([*common, "--conditioning", "text", "--out", str(root / "text")]) == 0
    return root / "class" / "checkpoint.pt", root / "plain" / "checkpoint.pt", root / "text" / "checkpoint.pt"


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """An untrained course classifier and noise-aware classifier: the path runs, the numbers mean nothing."""
    from diffusion_course import features, guidance
    from diffusion_course.classifier import ClassifierConfig, ImageClassifier

    torch.manual_seed(0)
    judge = features.ClassifierFeatures(ImageClassifier(ClassifierConfig()), "fashion-mnist", "stand-in", 0.5)
    noisy = ImageClassifier(ClassifierConfig(time_conditioned=True, timesteps=100)).eval()
    asked = {}

    def fake_noise_aware(dataset, schedule, timesteps, **kwargs):
        asked.update(dataset=dataset, schedule=schedule, timesteps=timesteps)
        return noisy

    monkeypatch.setattr(features, "course_classifier", lambda *a, **k: judge)
    monkeypatch.setattr(features, "_cache_dir", lambda root: tmp_path / "features")
    monkeypatch.setattr(guidance, "noise_aware_classifier", fake_noise_aware)
    return asked


def test_the_whole_sweep_runs_and_writes_its_table_json_and_grids(bench, checkpoints, stand_ins, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--checkpoint", str(checkpoints[0]), "--uncond-checkpoint", str(checkpoints[1]), "--num-samples", "10",
            "--steps", "2", "--scales", "0", "2", "--classifier-scales", "1", "--real", "16", "--batch-size", "4",
            "--text-encoders", "--out", str(out)]
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    names = ["CFG w=0", "CFG w=2", "unconditional model", "classifier guid. s=1"]
    for name in names:
        assert name in printed
    assert "class accuracy" in printed and "at equal training time" in printed and "best guidance scale" in printed
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == names
    assert all(r["num_samples"] == 10 for r in results["rows"])
    assert results["rows"][2]["class_accuracy"] is None and results["rows"][0]["class_accuracy"] is not None
    assert set(results["verdict"]) >= {"best", "accuracy_goal_met", "fid_goal_met"}
    assert results["training"]["class"]["steps"] == 1
    assert len(list(out.glob("grid_*.png"))) == 4
    assert stand_ins == {"dataset": "fashion-mnist", "schedule": "linear", "timesteps": 100}  # the model's schedule


def test_the_text_hook_adds_its_rows_to_the_table(bench, checkpoints, stand_ins, tmp_path, monkeypatch, capsys):
    seen = {}

    def text_rows(context):
        seen.update(context)
        return [{"name": "text (unseen words)", "fid": 1.0, "precision": 0.5, "recall": 0.5, "class_accuracy": 0.9,
                 "seconds": 0.0}]

    monkeypatch.setattr(bench, "text_rows", text_rows)
    args = ["--checkpoint", str(checkpoints[0]), "--uncond-checkpoint", str(checkpoints[1]), "--num-samples", "10",
            "--steps", "1", "--scales", "1", "--classifier-scales", "--real", "16", "--out", str(tmp_path / "o")]
    assert bench.main(args) == 0
    assert "text (unseen words)" in capsys.readouterr().out
    assert {"args", "labels", "extractor", "measure"} <= set(seen) and seen["labels"].tolist() == list(range(10))


def test_a_text_model_is_asked_in_unseen_words_then_in_its_training_words(bench, checkpoints, stand_ins, tmp_path,
                                                                          capsys):
    out = tmp_path / "out"
    args = ["--checkpoint", str(checkpoints[0]), "--uncond-checkpoint", str(checkpoints[1]),
            "--text-checkpoint", str(checkpoints[2]), "--num-samples", "10", "--steps", "1", "--scales", "1",
            "--classifier-scales", "--text-scales", "0", "2", "--real", "16", "--out", str(out)]
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    text = [r for r in results["rows"] if r["name"].startswith("text")]
    assert [r["name"] for r in text][:2] == ["text (course) w=0, unseen words", "text (course) w=2, unseen words"]
    assert [r["split"] for r in text] == ["heldout", "heldout", "train"]
    best = max(text[:2], key=lambda r: r["class_accuracy"])
    assert text[2]["guidance"] == best["guidance"] and text[2]["name"].endswith("training words")
    assert all(r["num_samples"] == 10 and r["class_accuracy"] is not None for r in text)
    assert text[0]["unknown_word_fraction"] > 0.5 and text[2]["unknown_word_fraction"] == 0.0
    assert results["text_verdict"]["course"]["best"] == best["name"]
    assert not results["text_verdict"]["course"]["goal_applies"]
    assert "text (course), unseen words: best" in printed and "reported (the goal is for a pretrained" in printed
    assert len(list(out.glob("grid_text*.png"))) == 3


def test_only_text_measures_the_text_rows_without_the_class_models(bench, checkpoints, stand_ins, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.setattr(bench, "train_model", lambda *a, **k: pytest.fail("nothing may train"))
    out = tmp_path / "out"
    args = ["--only", "text", "--text-checkpoint", str(checkpoints[2]), "--num-samples", "10", "--steps", "1",
            "--text-scales", "1", "--real", "16", "--out", str(out)]
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert "CFG" not in printed and "best guidance scale" not in printed and "unconditional" not in printed
    assert "text (course), unseen words: best" in printed and "text (course): 1 steps" in printed
    results = json.loads((out / "results.json").read_text())
    assert [r["split"] for r in results["rows"]] == ["heldout", "train"]
    assert results["verdict"] is None and set(results["training"]) == {"text (course)"}


def test_only_class_skips_the_text_rows(bench, checkpoints, stand_ins, tmp_path, monkeypatch, capsys):
    from diffusion_course import conditioning

    monkeypatch.setattr(bench, "train_model", lambda *a, **k: pytest.fail("--only class trains no text model"))
    monkeypatch.setattr(conditioning, "load_pretrained", lambda name: pytest.fail("--only class loads no encoder"))
    out = tmp_path / "out"
    args = ["--only", "class", "--checkpoint", str(checkpoints[0]), "--uncond-checkpoint", str(checkpoints[1]),
            "--num-samples", "10", "--steps", "1", "--scales", "1", "--classifier-scales", "--real", "16",
            "--out", str(out)]
    assert bench.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ["CFG w=1", "unconditional model"]
    assert results["text_verdict"] == {} and results["verdict"]["best"] == "CFG w=1"


def test_an_unavailable_pretrained_encoder_is_skipped_in_one_line(bench, checkpoints, stand_ins, tmp_path,
                                                                  monkeypatch, capsys):
    from diffusion_course import conditioning

    def offline(name):
        raise conditioning.TextEncoderUnavailable(f"cannot load the pretrained text encoder {name!r} (offline)")

    monkeypatch.setattr(conditioning, "load_pretrained", offline)
    monkeypatch.setattr(bench, "train_model", lambda *a, **k: pytest.fail("nothing may train for a skipped encoder"))
    out = tmp_path / "out"
    args = ["--checkpoint", str(checkpoints[0]), "--uncond-checkpoint", str(checkpoints[1]), "--text-encoders", "clip",
            "--num-samples", "10", "--steps", "1", "--scales", "1", "--classifier-scales", "--real", "16",
            "--out", str(out)]
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert "text (clip): skipped: cannot load the pretrained text encoder 'openai/clip-vit-base-patch32'" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["text_verdict"] == {} and results["notes"][0].startswith("text (clip) skipped")
    # with nothing else to measure, the run says so and fails instead of writing an empty table
    args = ["--only", "text", "--text-encoders", "clip", "--num-samples", "10", "--out", str(tmp_path / "none")]
    assert bench.main(args) == 1
    assert "nothing was measured: every text encoder was skipped" in capsys.readouterr().err
    assert not (tmp_path / "none" / "results.json").exists()


def test_text_verdicts_judge_pretrained_encoders_and_report_the_course_one(bench):
    rows = [{"name": "a", "encoder": "course", "split": "heldout", "class_accuracy": 0.6},
            {"name": "b", "encoder": "course", "split": "heldout", "class_accuracy": 0.7},
            {"name": "c", "encoder": "course", "split": "train", "class_accuracy": 0.99},
            {"name": "d", "encoder": "clip", "split": "heldout", "class_accuracy": 0.92}]
    verdict = bench.text_verdicts(rows)
    assert verdict["course"] == {"best": "b", "class_accuracy": 0.7, "goal_applies": False, "goal_met": False}
    assert verdict["clip"]["goal_applies"] and verdict["clip"]["goal_met"]


def test_balanced_labels_give_every_class_equally_often(bench):
    labels = bench.balanced_labels(1000, 10)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 100))
    assert bench.balanced_labels(12, 10).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def _row(name, fid, acc):
    return {"name": name, "fid": fid, "class_accuracy": acc}


def test_the_best_scale_is_the_lowest_fid_that_reaches_the_accuracy_goal(bench):
    rows = [_row("CFG w=1", 10.0, 0.80), _row("CFG w=3", 12.0, 0.96), _row("CFG w=5", 15.0, 0.99)]
    verdict = bench.verdicts(rows, _row("unconditional model", 13.0, None))
    assert verdict["best"] == "CFG w=3" and verdict["accuracy_goal_met"] and verdict["fid_goal_met"]
    assert not bench.verdicts(rows, _row("unconditional model", 11.0, None))["fid_goal_met"]
    short = [_row("CFG w=1", 10.0, 0.80), _row("CFG w=3", 12.0, 0.90), _row("classifier guid. s=1", 9.0, 0.99)]
    verdict = bench.verdicts(short, _row("unconditional model", 20.0, None))
    assert verdict["best"] == "CFG w=3" and not verdict["accuracy_goal_met"]  # the most accurate CFG row


def test_quick_mode_shrinks_every_budget(bench):
    args = bench.parse_args(["--quick"])
    assert args.minutes <= 0.25 and args.num_samples <= 40 and args.steps <= 5 and args.limit == 2048
    full = bench.parse_args([])
    assert (full.minutes, full.num_samples, full.sampler, full.steps) == (15.0, 1000, "dpm-solver++", 20)
    assert full.scales == [0.0, 1.0, 2.0, 3.0, 5.0]
    assert full.text_encoders == ["course", "clip"] and full.text_scales == [1.0, 3.0, 5.0]
    assert args.text_scales == [1.0]


def test_bad_input_exits_2_before_any_training(bench, checkpoints, tmp_path, capsys):
    occupied = tmp_path / "occupied"
    (occupied / "class").mkdir(parents=True)
    (occupied / "class" / "checkpoint.pt").write_bytes(b"precious")
    cases = [
        (["--num-samples", "5"], "--num-samples must be at least 10"),
        (["--scales", "1", "-2"], "guidance scales must be numbers >= 0"),
        (["--checkpoint", str(tmp_path / "missing.pt")], "no such file"),
        (["--out", str(occupied)], "exists: reuse it with --checkpoint"),
        (["--checkpoint", str(checkpoints[1]), "--uncond-checkpoint", str(checkpoints[1])],
         "trained with conditioning 'none', this role needs 'class'"),
        (["--checkpoint", str(checkpoints[0]), "--uncond-checkpoint", str(checkpoints[1]),
          "--text-checkpoint", str(checkpoints[0])], "trained with conditioning 'class', this role needs 'text'"),
        (["--text-scales", "-1"], "guidance scales must be numbers >= 0"),
        (["--only", "text", "--text-encoders"], "--only text needs a text model"),
    ]
    for args, message in cases:
        assert bench.main([*args, "--out", str(tmp_path / "o")] if "--out" not in args else args) == 2
        assert message in capsys.readouterr().err, args
    assert (occupied / "class" / "checkpoint.pt").read_bytes() == b"precious"
