"""The command-line trainer on real Fashion-MNIST: runs, resumes exactly, refuses bad input with exit 2."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from diffusion_course.checkpoint import load_checkpoint, save_checkpoint
from diffusion_course.conditioning import TEXT_ENCODERS
from diffusion_course.data import DATASETS
from diffusion_course.diffusion import CONDITIONINGS, PREDICTION_TYPES
from diffusion_course.losses import LOSS_TYPES, MIN_SNR_GAMMA
from diffusion_course.runtime import DEVICES
from diffusion_course.schedules import SCHEDULES
from diffusion_course.timesteps import TIMESTEP_SAMPLERS
from diffusion_course.train import build_parser, main, make_config
from diffusion_course.training import CPU_RECIPE, DDPM_RECIPE, FLIP_CHOICES, PRECISIONS, RECIPES, TrainConfig
from diffusion_course.unet import PRESETS

QUICK = ["--dataset", "fashion-mnist", "--limit", "64", "--batch-size", "16", "--timesteps", "100",
         "--sample-every", "0", "--no-progress", "--device", "cpu"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_a_short_run_writes_checkpoint_metrics_config_and_samples(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*QUICK, "--max-steps", "2", "--log-every", "1", "--out", str(out), "--sample-every", "2",
            "--sample-count", "4", "--sample-steps", "5"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "batch_size       = 16" in printed and "images=64" in printed and "hflip=False" in printed
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 2 and state["data_stats"]["dataset"] == "fashion-mnist"
    assert state["data_stats"]["count"] == 64 and state["config"]["batch_size"] == 16
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "config.json").is_file() and (out / "samples" / "step_0000002.png").is_file()


def test_resume_from_the_command_line_is_bit_exact(tmp_path):
    assert main([*QUICK, "--max-steps", "4", "--out", str(tmp_path / "straight")]) == 0
    assert main([*QUICK, "--max-steps", "2", "--out", str(tmp_path / "split")]) == 0
    assert main([*QUICK, "--max-steps", "4", "--out", str(tmp_path / "split"), "--resume"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
        assert torch.equal(a["ema"]["weights"][name], b["ema"]["weights"][name]), name


def test_resuming_a_gpu_run_where_device_auto_finds_only_a_cpu_warns_and_goes_on(tmp_path, capsys, monkeypatch):
    out = tmp_path / "gpu-run"
    assert main([*QUICK, "--max-steps", "2", "--out", str(out)]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    # as if written on a GPU machine by a run started with --device auto: CUDA random states
    state["config"]["device"] = "auto"
    state["rng"] = [{"device": "cuda", "noise": torch.zeros(16, dtype=torch.uint8),
                     "torch_cpu": state["rng"][0]["torch_cpu"], "torch_cuda": torch.zeros(16, dtype=torch.uint8)}]
    save_checkpoint(state, out / "checkpoint.pt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # here "auto" means the CPU
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    capsys.readouterr()
    without_device = [arg for arg in QUICK if arg not in ("--device", "cpu")]
    assert main([*without_device, "--max-steps", "3", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "device=cpu" in printed and "resumed_at_step=2" in printed
    assert ("warning: the checkpoint's random state comes from another device type; continuing on cpu with fresh "
            "noise (the run goes on, but not bit for bit)") in printed
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3


def _existing_run(tmp_path) -> Path:
    out = tmp_path / "existing"
    assert main([*QUICK, "--max-steps", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "folder", "--data-dir", "/no/such/folder"], "--data-dir /no/such/folder does not exist"),
        (["--dataset", "folder"], "--dataset folder needs --data-dir"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1"),
        (["--image-size", "30"], f"--model {CPU_RECIPE['model']} cannot take 30x30 images"),
        (["--precision", "fp16"], "precision fp16 needs a CUDA GPU"),
        (["--dataset", "mnist", "--hflip", "on"], "not allowed for mnist"),
        (["--grad-accum", "-1"], "grad_accum must be an integer >= 1"),
        (["--timestep-sampler", "importance"], "importance sampling of t is for the 'vlb' loss"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_training(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main([*QUICK, "--max-steps", "1", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffusion-course-train: error: ") and message in err
    assert err.count("\n") == 1
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()


def test_an_unwritable_output_folder_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main([*QUICK, "--max-steps", "1", "--out", str(blocker / "run")]) == 2
    assert "cannot write to --out" in capsys.readouterr().err


def test_a_run_needs_a_length_and_argparse_errors_exit_2(tmp_path, capsys):
    assert main([*QUICK, "--recipe", "ddpm", "--out", str(tmp_path / "r")]) == 2  # the cpu recipe has one
    assert "say how long to train: --epochs, --max-steps or --max-minutes" in capsys.readouterr().err
    assert main(["--dataset", "imagenet"]) == 2
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def test_checkpoints_are_never_overwritten_or_resumed_by_accident(tmp_path, capsys):
    out = _existing_run(tmp_path)
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main([*QUICK, "--max-steps", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a checkpoint" in err and "use --resume to continue it or another --out" in err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert main([*QUICK, "--max-steps", "3", "--out", str(out), "--resume", "--batch-size", "32"]) == 2
    assert "--batch-size cannot change when resuming (the checkpoint has 16" in capsys.readouterr().err
    assert main([*QUICK, "--max-steps", "3", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "--resume: no checkpoint in" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_a_malicious_checkpoint(tmp_path, capsys):
    out = tmp_path / "evil"
    out.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"config": {}, "x": Evil()}, out / "checkpoint.pt")
    assert main([*QUICK, "--max-steps", "1", "--out", str(out), "--resume"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


def test_non_finite_loss_exits_1_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan"
    args = [*QUICK, "--max-steps", "5", "--out", str(out), "--lr", "1e30", "--warmup-steps", "0",
            "--grad-clip", "0", "--checkpoint-every", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite training loss at step 2 (epoch 0, batch 1 of 4)" in err
    assert f"last good checkpoint: {out / 'checkpoint.pt'} (step 1)" in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 1


def test_max_minutes_stops_gracefully_with_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "timed"
    assert main([*QUICK, "--max-minutes", "0.0001", "--out", str(out)]) == 0
    assert "time limit reached: checkpoint saved at step 1" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 1


@pytest.mark.slow
def test_ctrl_c_in_a_real_process_saves_and_exits_130(tmp_path):
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "diffusion_course.train", *QUICK, "--max-steps", "100000", "--log-every", "1",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while not (out / "metrics.jsonl").exists():
            assert proc.poll() is None and time.time() < deadline, "training never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted: checkpoint saved at step" in output
    assert load_checkpoint(out / "checkpoint.pt")["step"] >= 1


def test_console_script_reports_bad_input_with_exit_code_2(tmp_path):
    script = shutil.which("diffusion-course-train", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is not installed (pip install -e .)"
    done = subprocess.run([script, "--batch-size", "0", "--max-steps", "1", "--out", str(tmp_path / "r")],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "diffusion-course-train: error: batch_size must be an integer >= 1, got 0\n"


# --- the parser is generated from TrainConfig ------------------------------------------------------


VOCABULARIES = {
    "dataset": DATASETS, "model": tuple(PRESETS), "device": DEVICES, "prediction": PREDICTION_TYPES,
    "schedule": SCHEDULES, "loss": LOSS_TYPES, "timestep_sampler": TIMESTEP_SAMPLERS,
    "conditioning": CONDITIONINGS, "precision": PRECISIONS, "hflip": FLIP_CHOICES, "text_encoder": TEXT_ENCODERS,
}  # fmt: skip


def test_every_config_field_has_an_option_with_its_default_and_vocabulary():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(actions) == {f.name for f in fields(TrainConfig)} | {"resume", "recipe"}
    assert actions["recipe"].choices == ("auto", "cpu", "ddpm")
    for f in fields(TrainConfig):
        action, flag = actions[f.name], "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):  # a switch: it can only flip the default
            assert action.option_strings == ([f"--no-{flag[2:]}"] if f.default else [flag]), f.name
            assert action.const is (not f.default), f.name
            continue
        assert action.option_strings == [flag], f.name
        by_recipe = "".join(f"; {name} recipe: {values[f.name]}" for name, values in RECIPES.items()
                            if f.name in values)
        if f.default is not None:
            assert action.help.endswith(f"(default: {f.default}{by_recipe})"), f.name
        assert tuple(action.choices or ()) == tuple(VOCABULARIES.get(f.name, ())), f.name
    assert set(VOCABULARIES) <= {f.name for f in fields(TrainConfig)}
    # no options: exactly the config's defaults
    assert TrainConfig(**vars(parser.parse_args([]))) == TrainConfig()


def test_option_values_get_the_field_types():
    parser = build_parser()
    given = vars(parser.parse_args(["--epochs", "2.5", "--batch-size", "8", "--data-dir", "d", "--sample-steps", "7",
                                    "--lr", "1e-3", "--min-snr", "--channels-last", "--no-progress"]))
    assert given == {"epochs": 2.5, "batch_size": 8, "data_dir": "d", "sample_steps": 7, "lr": 1e-3,
                     "min_snr": MIN_SNR_GAMMA, "channels_last": True, "progress": False}
    assert MIN_SNR_GAMMA == 5.0
    assert vars(parser.parse_args(["--min-snr", "3"]))["min_snr"] == 3.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-size", "8.5"])


@pytest.mark.parametrize(("value", "expected"), [("0", None), ("0.5", 0.5)])
def test_grad_clip_zero_means_no_clipping(tmp_path, value, expected):
    given = vars(build_parser().parse_args(["--grad-clip", value, "--max-steps", "1", "--device", "cpu",
                                            "--out", str(tmp_path / "r")]))
    config, state = make_config(given, resume=False)
    assert config.grad_clip == expected and state is None



def test_resuming_an_old_unscaled_linear_run_is_refused(tmp_path, capsys):
    out = _existing_run(tmp_path)  # T = 100
    state = load_checkpoint(out / "checkpoint.pt")
    del state["diffusion_config"]
    state["version"] = 1
    from diffusion_course.checkpoint import save_checkpoint

    save_checkpoint(state, out / "checkpoint.pt")
    assert main([*QUICK, "--max-steps", "2", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "unscaled linear schedule" in err and "can still be sampled" in err


def _config(tmp_path, *args: str) -> TrainConfig:
    given = vars(build_parser().parse_args([*args, "--out", str(tmp_path / "r")]))
    return make_config(given, resume=False)[0]


def test_with_no_options_a_cpu_run_gets_the_cpu_recipe_and_its_15_minutes(tmp_path):
    config = _config(tmp_path, "--device", "cpu")
    assert config == TrainConfig(**{**CPU_RECIPE, "device": "cpu", "out": str(tmp_path / "r")})
    # the measured winner of benchmarks/ablations.py (README, "Ablations")
    assert (config.model, config.schedule, config.prediction, config.min_snr) == ("tiny", "linear", "x0", 5.0)
    assert (config.batch_size, config.lr, config.warmup_steps, config.ema_decay) == (64, 1e-3, 0, 0.9995)
    assert config.max_minutes == 15
    assert _config(tmp_path, "--device", "cpu", "--recipe", "cpu") == config
    assert _config(tmp_path, "--device", "cpu", "--recipe", "auto") == config


def test_options_given_by_hand_win_over_the_recipe_and_a_length_replaces_its_minutes(tmp_path):
    config = _config(tmp_path, "--device", "cpu", "--batch-size", "32", "--schedule", "linear", "--max-steps", "10")
    assert (config.batch_size, config.schedule, config.max_steps) == (32, "linear", 10)
    assert config.max_minutes is None  # --max-steps 10 alone means 10 steps, not "10 steps or 15 minutes"
    assert config.lr == CPU_RECIPE["lr"] and config.model == CPU_RECIPE["model"]


def test_the_ddpm_recipe_is_ddpms_cifar10_setup_and_auto_picks_it_on_cuda(tmp_path, monkeypatch):
    config = _config(tmp_path, "--device", "cpu", "--recipe", "ddpm", "--epochs", "1")
    assert (config.model, config.schedule, config.lr, config.batch_size) == ("ddpm-cifar10", "linear", 2e-4, 128)
    assert (config.warmup_steps, config.ema_decay, config.grad_clip) == (5000, 0.9999, 1.0)
    assert all(getattr(config, k) == v for k, v in DDPM_RECIPE.items())
    from diffusion_course import training

    assert training.default_recipe("cuda") == "ddpm" and training.default_recipe("cpu") == "cpu"
    assert training.default_recipe("mps") == "cpu"


def test_recipe_with_resume_is_refused(tmp_path, capsys):
    out = _existing_run(tmp_path)
    assert main([*QUICK, "--max-steps", "3", "--out", str(out), "--resume", "--recipe", "cpu"]) == 2
    assert "--recipe cannot be used with --resume" in capsys.readouterr().err


def test_help_lists_the_recipes(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "cpu = --model tiny --schedule linear --prediction x0 --min-snr 5.0" in text
    assert "ddpm = --model ddpm-cifar10" in text
    assert "(default: 128; cpu recipe: 64; ddpm recipe: 128)" in text
