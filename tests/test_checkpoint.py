"""Checkpoints: atomic writes that never destroy the last good file, loads that never run code, and
everything a sampler needs (the model and its DiffusionConfig) without the training code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from diffusion_course.checkpoint import (
    CheckpointError,
    atomic_write,
    diffusion_config_of,
    load_checkpoint,
    load_model,
    save_checkpoint,
    to_plain,
)
from diffusion_course.diffusion import DiffusionConfig
from diffusion_course.sampling import ddpm_sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_round_trip(tmp_path):
    state = {"step": 3, "weights": {"w": torch.arange(6.0).view(2, 3)}, "config": {"mults": [1, 2], "name": "x"}}
    path = save_checkpoint(state, tmp_path / "sub" / "ckpt.pt")
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and loaded["config"] == {"mults": [1, 2], "name": "x"}
    assert torch.equal(loaded["weights"]["w"], state["weights"]["w"])
    assert os.listdir(tmp_path / "sub") == ["ckpt.pt"]  # no temporary file left behind


class _Evil:
    def __reduce__(self):
        # if unpickling ever ran this, the marker file would appear
        return (os.system, (f"touch {_Evil.marker}",))


def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil()}, path)  # a plain pickle with a __reduce__ payload
    with pytest.raises(CheckpointError, match="refusing to load .*not a plain-data checkpoint.*GLOBAL"):
        load_checkpoint(path)
    assert not _Evil.marker.exists()


def test_garbage_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not hold a checkpoint dictionary"):
        load_checkpoint(tmp_path / "list.pt")


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def half_written(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # the new file is now corrupt ...
        raise failure  # ... and the process dies mid-save

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(type(failure)):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the old checkpoint is untouched
    assert os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path, failure):
    path = atomic_write(tmp_path / "numbers.bin", lambda f: f.write(b"old contents"))

    def write_half_then_fail(f):
        f.write(b"new but unfin")
        raise failure

    with pytest.raises(type(failure)):
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["numbers.bin"]  # no temporary file left behind


def test_atomic_write_replaces_the_file_and_sets_its_mode(tmp_path):
    path = atomic_write(tmp_path / "data.bin", lambda f: f.write(b"one"))
    assert path.read_bytes() == b"one" and path.stat().st_mode & 0o777 == 0o600  # mkstemp's private default
    atomic_write(path, lambda f: f.write(b"two"), mode=0o644)
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["data.bin"]


def test_atomic_write_syncs_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(tmp_path / "x.bin", lambda f: f.write(b"x"))
    assert events == ["fsync", "replace", "fsync"]  # the data, the rename, then the directory entry


@dataclass
class _Config:
    name: str
    mults: tuple
    size: int | None = None


def test_to_plain_makes_configs_weights_only_safe(tmp_path):
    plain = to_plain({"config": _Config("a", (1, 2)), "path": tmp_path})
    assert plain == {"config": {"name": "a", "mults": [1, 2], "size": None}, "path": str(tmp_path)}
    save_checkpoint(plain, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt") == plain
    with pytest.raises(CheckpointError, match="cannot store a object in a checkpoint"):
        to_plain({"x": object()})


# --- what a sampler needs -----------------------------------------------------------------------


def _saved_run(out, **settings):
    """A freshly built run of the real trainer, saved before any step (fast): returns (trainer, path)."""
    from diffusion_course.trainer import Trainer
    from diffusion_course.training import TrainConfig, build_model, build_objective

    config = TrainConfig(dataset="cifar10", out=str(out), batch_size=2, max_steps=1, progress=False, timesteps=20,
                         **settings)
    num_classes = 3 if config.conditioning == "class" else None
    torch.manual_seed(0)
    model = build_model(config, channels=1, image_size=8, num_classes=num_classes)
    data = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    trainer = Trainer(config, model, data, objective=build_objective(config, num_classes))
    return trainer, trainer.save()


def test_a_checkpoint_records_its_diffusion_config_and_load_model_rebuilds_both(tmp_path):
    trainer, _ = _saved_run(tmp_path, loss="hybrid", schedule="cosine", prediction="v", conditioning="class")
    with torch.no_grad():
        next(trainer.model.parameters()).add_(1.0)  # raw weights != EMA weights
    path = trainer.save()
    expected = DiffusionConfig(schedule="cosine", timesteps=20, prediction="v", variance="learned",
                               conditioning="class", num_classes=3)
    assert load_checkpoint(path)["diffusion_config"] == expected.to_dict()
    model, diffusion, state = load_model(path)
    assert diffusion == expected == trainer.objective.diffusion and state["step"] == 0
    assert model.config == trainer.model.config and not model.training
    x, t, labels = torch.randn(2, 1, 8, 8), torch.tensor([3, 19]), torch.tensor([0, 3])  # 3 = the "no class" label
    with torch.no_grad():
        assert torch.equal(model(x, t, class_labels=labels), trainer.ema.module.eval()(x, t, class_labels=labels))
    raw, _, _ = load_model(path, ema=False)
    assert all(torch.equal(p, q) for p, q in zip(raw.parameters(), trainer.model.parameters(), strict=True))
    assert not torch.equal(next(raw.parameters()), next(model.parameters()))


def test_an_old_checkpoint_derives_its_diffusion_config_from_the_run_config():
    assert diffusion_config_of({"config": {"schedule": "sigmoid", "timesteps": 50, "prediction": "x0",
                                           "loss": "vlb"}}) == DiffusionConfig("sigmoid", 50, "x0", "learned")
    assert diffusion_config_of({"config": {"schedule": "linear", "timesteps": 1000}}) == DiffusionConfig()
    with pytest.raises(CheckpointError, match="records no diffusion setup"):
        diffusion_config_of({"config": {"batch_size": 3}})


def test_load_model_refuses_what_is_not_a_model_checkpoint(tmp_path):
    save_checkpoint({"step": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="is not a model checkpoint of diffusion-course"):
        load_model(tmp_path / "x.pt")
    _, path = _saved_run(tmp_path / "run")
    state = load_checkpoint(path)
    state["model_config"]["base_channels"] *= 2
    save_checkpoint(state, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="the weights do not fit the recorded model"):
        load_model(tmp_path / "y.pt")


SAMPLE_ONLY = """
import sys

import torch

import diffusion_course.checkpoint as checkpoint
import diffusion_course.sampling as sampling

model, diffusion, _ = checkpoint.load_model(sys.argv[1])
images = sampling.ddpm_sample(model, diffusion.noise_schedule(), (2, 1, 8, 8), steps=3,
                              generator=torch.Generator().manual_seed(0), prediction_type=diffusion.prediction,
                              variance_type=diffusion.variance)
loaded = sorted(name for name in sys.modules if name.startswith("diffusion_course."))
print(repr((diffusion.to_dict(), images.double().sum().item(), loaded)))
"""


def test_a_sample_path_imports_no_training_code(tmp_path):
    trainer, path = _saved_run(tmp_path, loss="hybrid")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SAMPLE_ONLY, str(path)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    config, total, loaded = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    for training_code in ("diffusion_course.trainer", "diffusion_course.training", "diffusion_course.train"):
        assert training_code not in loaded
    assert config == trainer.objective.diffusion.to_dict() and config["variance"] == "learned"
    # and it sampled the saved model: the same pictures in this process
    model, diffusion, _ = load_model(path)
    images = ddpm_sample(model, diffusion.noise_schedule(), (2, 1, 8, 8), steps=3,
                         generator=torch.Generator().manual_seed(0), variance_type="learned")
    assert total == pytest.approx(images.double().sum().item(), abs=1e-4)

