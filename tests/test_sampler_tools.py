"""Phase 4's tools around the samplers: a trained model for the notebook (notebook 03's run, or a short
training), the sampler comparison the benchmark and the notebook share, and the step scrubber."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from diffusion_course import features, pretrained, sampler_comparison, viz
from diffusion_course.classifier import ClassifierConfig, ImageClassifier
from diffusion_course.evaluation import evaluate_images
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.sampler_comparison import SamplerRow
from diffusion_course.sampling import Trajectory, sample
from diffusion_course.schedules import get_schedule
from diffusion_course.training import CPU_RECIPE
from diffusion_course.widgets import step_scrubber, trajectory_frame

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model trained for 2 steps with notebook 03's recipe (cosine schedule), through train_short_run."""
    config = pretrained.notebook_03_recipe(tmp_path_factory.mktemp("run") / "tiny", model="tiny", minutes=None,
                                           max_steps=2, limit=64)
    config.batch_size, config.warmup_steps = 8, 1
    return pretrained.train_short_run(config, progress=False)


# ---------------------------------------------------------------------------
# A trained model for the notebook
# ---------------------------------------------------------------------------


def test_notebook_03_recipe_is_notebook_03s(tmp_path):
    config = pretrained.notebook_03_recipe(tmp_path, minutes=5)
    assert {key: getattr(config, key) for key in CPU_RECIPE} == {**CPU_RECIPE, "max_minutes": 5}
    assert config.max_minutes == 5 and config.device == "cpu" and config.out == str(tmp_path)
    config.validate()


def test_train_short_run_trains_and_never_overwrites(checkpoint):
    pipe = DiffusionPipeline.from_checkpoint(checkpoint)
    assert pipe.checkpoint["step"] == 2 and pipe.checkpoint["config"]["model"] == "tiny"
    assert pipe.diffusion.schedule == CPU_RECIPE["schedule"] and pipe.image_shape == (1, 28, 28)
    config = pretrained.notebook_03_recipe(checkpoint.parent, model="tiny", minutes=None, max_steps=1)
    before = checkpoint.read_bytes()
    with pytest.raises(ValueError, match="exists already"):
        pretrained.train_short_run(config, progress=False)
    assert checkpoint.read_bytes() == before


def _notebook_03_run(root, checkpoint):
    target = root / "notebooks" / pretrained.NOTEBOOK_03_RUN
    target.parent.mkdir(parents=True)
    shutil.copy(checkpoint, target)
    return target


def test_notebook_03_checkpoint_is_found_from_a_sibling_notebook_folder(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setattr(pretrained, "_REPO_NOTEBOOKS", tmp_path / "elsewhere")
    assert pretrained.notebook_03_checkpoint(tmp_path) is None
    target = _notebook_03_run(tmp_path, checkpoint)
    here = tmp_path / "notebooks" / "04_sampling"
    here.mkdir()
    assert pretrained.notebook_03_checkpoint(here) == target.resolve()  # ../03_training/runs/...
    assert pretrained.notebook_03_checkpoint(tmp_path / "notebooks") == target.resolve()  # opened from notebooks/
    monkeypatch.chdir(here)
    assert pretrained.notebook_03_checkpoint() == target.resolve()


def test_course_model_prefers_notebook_03s_run_and_trains_nothing(tmp_path, checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "_REPO_NOTEBOOKS", tmp_path / "elsewhere")
    _notebook_03_run(tmp_path, checkpoint)
    here = tmp_path / "notebooks" / "04_sampling"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setattr(pretrained, "train_short_run", lambda *a, **k: pytest.fail("must not train"))
    pipe = pretrained.course_model(fast=False)
    assert isinstance(pipe, DiffusionPipeline) and pipe.checkpoint["step"] == 2
    assert "notebook 03's model" in capsys.readouterr().out
    assert not (here / "runs").exists()


def test_course_model_trains_once_then_reuses_its_run(tmp_path, checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "_REPO_NOTEBOOKS", tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_train(config, progress=True):
        calls.append(config)
        out = tmp_path / config.out / "checkpoint.pt"
        out.parent.mkdir(parents=True)
        shutil.copy(checkpoint, out)
        return out

    monkeypatch.setattr(pretrained, "train_short_run", fake_train)
    first = pretrained.course_model(fast=False, minutes=3)
    assert len(calls) == 1 and calls[0].model == CPU_RECIPE["model"] and calls[0].max_minutes == 3
    assert calls[0].out == str(pretrained.QUICK_RUN)
    assert f"training the {CPU_RECIPE['model']} U-Net for 3 minutes" in capsys.readouterr().out
    again = pretrained.course_model(fast=False)
    assert len(calls) == 1 and "trained earlier" in capsys.readouterr().out
    assert torch.equal(next(again.model.parameters()), next(first.model.parameters()))


def test_course_model_in_fast_mode_trains_tiny_in_a_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipe = pretrained.course_model(fast=True)
    assert pipe.checkpoint["config"]["model"] == "tiny" and pipe.checkpoint["step"] == 10
    assert list(tmp_path.iterdir()) == []  # nothing written next to the notebook
    images = pipe.generate(2, sampler="dpm-solver++", steps=2)
    assert images.shape == (2, 1, 28, 28) and images.abs().max() <= 1


# ---------------------------------------------------------------------------
# The sampler comparison
# ---------------------------------------------------------------------------


def test_parse_configs():
    assert sampler_comparison.parse_configs("ddpm:1000, ddim:50,dpm-solver++:20") == [
        ("ddpm", 1000), ("ddim", 50), ("dpm-solver++", 20)]
    for bad in ("ddim", "plms:10", "ddim:0", "ddim:ten", ""):
        with pytest.raises(ValueError, match="SAMPLER:STEPS|no sampler settings"):
            sampler_comparison.parse_configs(bad)


def _row(sampler, steps, seconds, fid):
    return SamplerRow(sampler, steps, 100, seconds, 100 / seconds, fid, fid - 1, 0.01, 0.001, 0.5, 0.5)


def test_goal_verdicts_compare_with_the_longest_ddpm_run():
    rows = [_row("ddpm", 1000, 1000.0, 10.0), _row("ddpm", 100, 100.0, 30.0), _row("ddim", 50, 49.0, 11.4),
            _row("dpm-solver++", 20, 51.0, 10.5)]
    ddim, dpm = sampler_comparison.goal_verdicts(rows)
    assert ddim["reference"] == "ddpm-1000" and ddim["passed"] is True
    assert ddim["fid_ratio"] == pytest.approx(1.14) and ddim["speedup"] == pytest.approx(1000 / 49)
    assert dpm["passed"] is False and dpm["speedup"] < 20  # 10.5 is within 10 %, but 19.6x is too slow
    rows[2] = _row("ddim", 50, 10.0, 11.6)  # fast enough, but 16 % worse
    assert sampler_comparison.goal_verdicts(rows)[0]["passed"] is False
    missing = sampler_comparison.goal_verdicts([_row("ddim", 50, 1.0, 1.0)])
    assert [v["passed"] for v in missing] == [None, None]
    table = sampler_comparison.format_table(rows, sampler_comparison.goal_verdicts(rows))
    assert "FAIL (FID 1.16x ddpm-1000's, 100.0x faster)" in table and "1.0x" in table.splitlines()[1]
    assert "not measured" in sampler_comparison.format_table(rows[2:], missing)


def test_a_gap_inside_the_seed_noise_decides_nothing():
    rows = [_row("ddpm", 1000, 1000.0, 1.0), _row("ddim", 50, 10.0, 1.3), _row("dpm-solver++", 20, 5.0, 1.6)]
    spread = sampler_comparison.SeedSpread("dpm-solver++", 20, 100, [0, 1, 2], [1.6, 1.4, 1.8])
    assert spread.mean == pytest.approx(1.6) and spread.std == pytest.approx(0.2)
    ddim, dpm = sampler_comparison.goal_verdicts(rows, spread=spread)
    band = 2 * 2 ** 0.5 * 0.2  # two one-seed FIDs differ by sqrt(2) std; 2 of those: a 95 % band (0.566)
    assert ddim["passed"] is False and ddim["within_noise"] is True and ddim["noise_band"] == pytest.approx(band)
    assert dpm["passed"] is False and dpm["within_noise"] is False and dpm["fid_gap"] == pytest.approx(0.6)
    table = sampler_comparison.format_table(rows, [ddim, dpm], spread)
    assert "seed noise: dpm-solver++-20 FID over seeds [0, 1, 2]: 1.600, 1.400, 1.800 (mean 1.600, std 0.200)" in table
    assert ("FAIL (FID 1.30x ddpm-1000's, 100.0x faster; the FID gap +0.300 is within seed noise (+-0.566): "
            "not decided at this sample size)") in table
    assert "FAIL (FID 1.60x ddpm-1000's, 200.0x faster; FID gap +0.600, seed-noise band +-0.566)" in table
    one_seed = sampler_comparison.SeedSpread("ddim", 50, 100, [0], [1.3])
    assert one_seed.std == 0.0 and "within_noise" not in sampler_comparison.goal_verdicts(rows, spread=one_seed)[0]
    record = sampler_comparison.results_record(rows, [ddim, dpm], spread)
    assert record["seed_noise"]["std"] == pytest.approx(0.2) and record["seed_noise"]["fids"] == [1.6, 1.4, 1.8]
    assert sampler_comparison.spread_from_record(json.loads(json.dumps(record))) == spread
    assert sampler_comparison.spread_from_record(sampler_comparison.results_record(rows, [ddim, dpm])) is None


def test_results_round_trip_through_json(tmp_path, monkeypatch):
    rows = [_row("ddpm", 10, 2.0, 5.0), _row("ddim", 5, 1.0, 6.0)]
    record = sampler_comparison.results_record(rows, sampler_comparison.goal_verdicts(rows), num_samples=100)
    path = tmp_path / "samplers.json"
    path.write_text(json.dumps(record))
    loaded = sampler_comparison.load_results(path)
    assert sampler_comparison.rows_from_record(loaded) == rows and loaded["num_samples"] == 100
    assert loaded["path"] == str(path.resolve()) and loaded["machine"]["threads"] >= 1
    assert sampler_comparison.load_results(tmp_path / "none.json") is None
    # the default: two levels above a notebook's folder, as in notebooks/04_sampling/
    monkeypatch.setattr(sampler_comparison, "_REPO", tmp_path / "elsewhere")
    notebook = tmp_path / "notebooks" / "04_sampling"
    notebook.mkdir(parents=True)
    monkeypatch.chdir(notebook)
    assert sampler_comparison.load_results() is None
    committed = tmp_path / sampler_comparison.RESULTS_FILE
    committed.parent.mkdir(parents=True)
    committed.write_text(json.dumps(record))
    assert sampler_comparison.rows_from_record(sampler_comparison.load_results()) == rows


@pytest.fixture
def extractor(tmp_path, monkeypatch):
    """An untrained small classifier as the feature space, its caches in a temporary folder."""
    monkeypatch.setattr(features, "_cache_dir", lambda root: tmp_path / "features")
    torch.manual_seed(0)
    model = ImageClassifier(ClassifierConfig(widths=(8, 16)))
    return features.ClassifierFeatures(model, "fashion-mnist", "test-only", 0.1)


def test_compare_samplers_times_and_scores_like_the_evaluate_command(checkpoint, extractor):
    pipe = DiffusionPipeline.from_checkpoint(checkpoint)
    seen = []
    rows, kept = sampler_comparison.compare_samplers(
        pipe, [("ddpm", 4), ("ddim", 2)], num_samples=8, extractor=extractor, real_limit=32, seed=3,
        batch_size=5, on_row=seen.append, keep_images=3)
    assert [r.name for r in rows] == ["ddpm-4", "ddim-2"] and seen == rows
    assert all(r.seconds > 0 and r.images_per_s == pytest.approx(8 / r.seconds) for r in rows)
    assert kept["ddim-2"].shape == (3, 1, 28, 28)
    images = pipe.generate(8, sampler="ddim", steps=2, seed=3, batch_size=5)
    assert torch.equal(kept["ddim-2"], images[:3])
    report = evaluate_images(images, "fashion-mnist", extractor=extractor, real_limit=32, seed=3)
    assert (rows[1].fid, rows[1].kid, rows[1].precision) == (report.fid, report.kid, report.precision)


def test_plot_quality_vs_steps_draws_one_line_per_sampler():
    rows = [_row("ddim", 10, 1.0, 9.0), _row("ddim", 50, 5.0, 6.0), _row("dpm-solver++", 20, 2.0, 5.5)]
    fig = viz.plot_quality_vs_steps(rows, reference="test")
    steps_axis, time_axis = fig.axes
    assert [line.get_label() for line in steps_axis.get_lines()] == ["ddim", "dpm-solver++"]
    assert list(steps_axis.get_lines()[0].get_xdata()) == [10, 50]
    assert list(time_axis.get_lines()[0].get_ydata()) == [9.0, 6.0]


# ---------------------------------------------------------------------------
# The step scrubber
# ---------------------------------------------------------------------------


@pytest.fixture
def trajectory():
    schedule = get_schedule("cosine", 100)
    traj = Trajectory(images=slice(0, 2))

    def model(x, t):
        return 0.5 * x

    sample(model, schedule, (3, 1, 8, 8), sampler="ddim", steps=4, callback=traj,
           generator=torch.Generator().manual_seed(0))
    return traj


def test_trajectory_frame_shows_x_t_and_x0_hat_of_one_step(trajectory):
    fig = trajectory_frame(trajectory, 2, image=1)
    x_axis, x0_axis, t_axis = fig.axes
    assert np.allclose(x_axis.images[0].get_array(), viz.to_display(trajectory.xs[2][1]), atol=1e-6)
    assert np.allclose(x0_axis.images[0].get_array(), viz.to_display(trajectory.x0s[2][1]), atol=1e-6)
    assert f"t = {trajectory.ts[2]}" in x_axis.get_title()
    marker = t_axis.get_lines()[-1]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (2, trajectory.ts[2])
    with pytest.raises(ValueError, match=r"step k must be in \[0, 3\]"):
        trajectory_frame(trajectory, 4)


def test_step_scrubber_redraws_on_every_move(trajectory, monkeypatch):
    shown = []
    monkeypatch.setattr("diffusion_course.widgets.display", shown.append)
    w = step_scrubber(trajectory)
    slider = w.children[0]
    assert (slider.min, slider.max, slider.value) == (0, 3, 0)
    assert shown == [w.result] and isinstance(w.result, Figure)
    assert f"t = {trajectory.ts[0]}" in w.result.axes[0].get_title()
    slider.value = 3
    assert shown[-1] is w.result and f"t = {trajectory.ts[3]}" in w.result.axes[0].get_title()
    assert np.allclose(w.result.axes[1].images[0].get_array(), viz.to_display(trajectory.x0s[3][0]), atol=1e-6)


def test_step_scrubber_rejects_empty_trajectories_and_bad_images(trajectory):
    with pytest.raises(ValueError, match="trajectory is empty"):
        step_scrubber(Trajectory())
    with pytest.raises(ValueError, match=r"image must be in \[0, 1\]"):
        step_scrubber(trajectory, image=2)
