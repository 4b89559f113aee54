"""benchmarks/samplers.py at toy size: its options, its table and results.json, its exits on bad input.

The real run (1000 samples per row, DDPM-1000 included) takes hours on a CPU and is run by hand;
here a 1-step tiny model, 6 samples and an untrained feature extractor exercise every part.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_script

from diffusion_course import features, pretrained
from diffusion_course.classifier import ClassifierConfig, ImageClassifier
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.training import CPU_RECIPE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "samplers.py"


def _script():
    return load_script("samplers")


bench = _script()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = pretrained.notebook_03_recipe(tmp_path_factory.mktemp("run") / "tiny", model="tiny", minutes=None,
                                           max_steps=1, limit=32)
    config.batch_size, config.warmup_steps = 8, 1
    return pretrained.train_short_run(config, progress=False)


@pytest.fixture
def offline_features(tmp_path, monkeypatch):
    """The benchmark's course classifier replaced by an untrained one, its caches in tmp_path."""
    monkeypatch.setattr(features, "_cache_dir", lambda root: tmp_path / "features")
    torch.manual_seed(0)
    extractor = features.ClassifierFeatures(ImageClassifier(ClassifierConfig(widths=(8, 16))), "fashion-mnist",
                                            "test-only", 0.1)
    asked = []

    def course_classifier(dataset, **kwargs):
        asked.append((dataset, kwargs))
        return extractor

    monkeypatch.setattr(bench, "course_classifier", course_classifier)
    return asked


def test_options_quick_mode_and_bad_settings(capsys):
    args = bench.parse_args([])
    assert args.configs == [("ddpm", 1000), ("ddpm", 100), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100),
                            ("dpm-solver++", 10), ("dpm-solver++", 20)]
    assert (args.num_samples, args.train_minutes, args.real) == (1000, 15.0, None)
    quick = bench.parse_args(["--quick"])
    assert quick.num_samples == 32 and quick.real == 500 and ("ddim", 50) in quick.configs
    assert bench.parse_args(["--quick", "--configs", "ddim:5"]).configs == [("ddim", 5)]
    for bad in (["--configs", "ddim:fifty"], ["--num-samples", "3"], ["--real", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            bench.parse_args(bad)
        assert exit_info.value.code == 2
    assert "SAMPLER:STEPS" in capsys.readouterr().err


def test_a_toy_run_prints_the_table_and_writes_results(checkpoint, offline_features, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "REPO", tmp_path / "repo")
    out = tmp_path / "out"
    code = bench.main(["--checkpoint", str(checkpoint), "--configs", "ddpm:3,ddim:2,dpm-solver++:2",
                       "--num-samples", "6", "--real", "16", "--batch-size", "4", "--device", "cpu",
                       "--skip-throughput", "--out", str(out), "--publish"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ddpm-3" in printed and "speed-up" in printed and "not with published Inception FIDs" in printed
    assert "goal ddim-50: FID within 15% of the reference, >= 20x faster: not measured" in printed
    record = json.loads((out / "results.json").read_text())
    assert [(r["sampler"], r["steps"]) for r in record["rows"]] == [("ddpm", 3), ("ddim", 2), ("dpm-solver++", 2)]
    assert all(r["num_samples"] == 6 and r["seconds"] > 0 and r["fid"] >= 0 for r in record["rows"])
    assert record["num_samples"] == 6 and record["num_real"] == 16 and record["throughput"] is None
    assert record["features"] == "course-classifier-fashion-mnist-test-only"
    assert record["schedule"] == CPU_RECIPE["schedule"]
    assert [g["passed"] for g in record["goals"]] == [None, None]
    assert sorted(p.name for p in out.glob("*.png")) == ["samples_ddim-2.png", "samples_ddpm-3.png",
                                                        "samples_dpm-solver++-2.png"]
    published = tmp_path / "repo" / "benchmarks" / "results" / "samplers.json"
    assert json.loads(published.read_text()) == record
    assert offline_features[0][0] == "fashion-mnist" and offline_features[0][1]["recipe"] is None
    # the seed noise: the fastest row (no dpm-solver++-20 here) again with seeds 1, 2, 3
    noise = record["seed_noise"]
    fastest = min(record["rows"], key=lambda r: r["seconds"])
    assert (noise["sampler"], noise["steps"]) == (fastest["sampler"], fastest["steps"])
    assert noise["seeds"] == [0, 1, 2, 3] and noise["fids"][0] == fastest["fid"] and len(noise["fids"]) == 4
    assert "seed noise:" in printed and f"std {noise['std']:.3f}" in printed


def test_a_rerun_keeps_the_rows_it_measured_and_measures_only_the_rest(checkpoint, offline_features, tmp_path,
                                                                       monkeypatch, capsys):
    out = tmp_path / "out"
    common = ["--checkpoint", str(checkpoint), "--num-samples", "6", "--real", "16", "--batch-size", "4",
              "--device", "cpu", "--skip-throughput", "--noise-seeds", "1", "--out", str(out)]
    assert bench.main([*common, "--configs", "ddim:2"]) == 0
    first = json.loads((out / "results.json").read_text())
    real_compare = bench.compare_samplers
    asked = []

    def compare(pipe, configs, **kwargs):
        asked.append(list(configs))
        return real_compare(pipe, configs, **kwargs)

    monkeypatch.setattr(bench, "compare_samplers", compare)
    monkeypatch.setattr(bench, "seed_spread", lambda *a, **k: pytest.fail("the seed noise was measured already"))
    capsys.readouterr()
    assert bench.main([*common, "--configs", "ddim:2,ddpm:3"]) == 0
    assert asked == [[("ddpm", 3)]]  # ddim-2 is kept from the first run
    assert "ddim-2             measured before" in capsys.readouterr().out
    second = json.loads((out / "results.json").read_text())
    assert second["rows"][0] == first["rows"][0] and [r["steps"] for r in second["rows"]] == [2, 3]
    assert second["seed_noise"] == first["seed_noise"]
    # other settings (here: more samples) make the kept rows stale: everything is measured again
    asked.clear()
    monkeypatch.setattr(bench, "seed_spread", lambda pipe, row, seeds, **k: bench.SeedSpread(
        row.sampler, row.steps, row.num_samples, [0, *seeds], [row.fid] * (1 + len(seeds))))
    assert bench.main([*common[:2], "--num-samples", "8", *common[4:], "--configs", "ddim:2"]) == 0
    assert asked == [[("ddim", 2)]]


def test_bad_checkpoints_and_too_many_steps_exit_2(checkpoint, offline_features, tmp_path, capsys):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("hello")
    assert bench.main(["--checkpoint", str(not_a_checkpoint), "--out", str(tmp_path / "o1")]) == 2
    assert "samplers.py: error:" in capsys.readouterr().err
    assert bench.main(["--checkpoint", str(checkpoint), "--configs", "ddpm:1001", "--out", str(tmp_path / "o2")]) == 2
    assert "more steps than the model's T = 1000" in capsys.readouterr().err


def test_a_trained_model_is_reused_not_retrained(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "train_short_run", lambda *a, **k: pytest.fail("must not train"))
    args = bench.parse_args(["--quick", "--out", str(tmp_path)])
    (tmp_path / "model-quick").mkdir()
    shutil.copy(checkpoint, tmp_path / "model-quick" / "checkpoint.pt")
    assert bench.get_checkpoint(args) == tmp_path / "model-quick" / "checkpoint.pt"
    assert "reusing" in capsys.readouterr().out
    trained = []
    monkeypatch.setattr(bench, "train_short_run", lambda config, progress: trained.append(config) or "ckpt")
    assert bench.get_checkpoint(bench.parse_args(["--out", str(tmp_path / "fresh"), "--train-minutes", "7"])) == "ckpt"
    assert trained[0].model == CPU_RECIPE["model"] and trained[0].max_minutes == 7
    assert trained[0].schedule == CPU_RECIPE["schedule"]
    assert trained[0].prediction == CPU_RECIPE.get("prediction", "eps")


def test_cpu_throughput_times_the_small_preset(checkpoint):
    pipe = DiffusionPipeline.from_checkpoint(checkpoint)
    result = bench.cpu_throughput(pipe, count=2, steps=2)
    assert result["count"] == 2 and result["seconds"] > 0 and "untrained small U-Net" in result["model"]
    assert result["passed"] == (result["seconds"] < 10) and result["threads"] == torch.get_num_threads()
    pipe.checkpoint["config"]["model"] = "small"  # a small checkpoint is timed with its own network
    assert bench.cpu_throughput(pipe, count=2, steps=1)["model"] == "the checkpoint's small U-Net"
