"""Latent diffusion: the latent scale, the caches, the objective wrapper, and train/sample end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_course import features
from diffusion_course import latent as latent_module
from diffusion_course.autoencoder import Autoencoder, AutoencoderRecipe, autoencoder_config
from diffusion_course.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from diffusion_course.classifier import build_classifier
from diffusion_course.data import load_tensors
from diffusion_course.diffusion import DiffusionConfig, LatentConfig
from diffusion_course.evaluate import main as evaluate_main
from diffusion_course.features import ClassifierFeatures
from diffusion_course.latent import (
    AutoencoderUnavailable,
    LatentObjective,
    LatentSpace,
    course_autoencoder,
    dataset_latents,
    latent_scaling_factor,
)
from diffusion_course.losses import DiffusionObjective
from diffusion_course.pipeline import DiffusionPipeline
from diffusion_course.sample import main as sample_main
from diffusion_course.train import main as train_main
from diffusion_course.training import TrainConfig, resolve_hflip
from diffusion_course.unet import UNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(base_channels=8, channel_mults=(1, 2, 2), norm_groups=4)
QUICK = ["--dataset", "fashion-mnist", "--limit", "64", "--batch-size", "16", "--timesteps", "50",
         "--sample-every", "0", "--no-progress", "--device", "cpu", "--latent", "--vae-epochs", "2",
         "--prediction", "eps"]  # fmt: skip  (an untrained eps-model's samples leave [-1, 1]: see the clipping test)


@pytest.fixture(scope="module")
def fashion():
    return load_tensors("fashion-mnist", limit=32, progress=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One data root for the module: the dataset copy and the autoencoder cache are made once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def in_data_root(data_root, monkeypatch):
    monkeypatch.setenv("DIFFUSION_COURSE_DATA", str(data_root))
    return data_root


def tiny_space(scale: float = 2.0) -> LatentSpace:
    torch.manual_seed(0)
    return LatentSpace(Autoencoder(autoencoder_config("fashion-mnist", 1, 28, **TINY)), scale, "vae-test")


def recipe(**changes) -> AutoencoderRecipe:
    return AutoencoderRecipe(epochs=2, batch_size=16, warmup_steps=0, overrides=TINY, **changes)


# -- the scale of the latents ----------------------------------------------------------------


def test_the_scaling_factor_makes_the_latents_std_one():
    latents = 7.0 * torch.randn(100, 4, 8, 8, generator=torch.Generator().manual_seed(0)) + 3.0
    factor = latent_scaling_factor(latents)
    assert factor == pytest.approx(1 / latents.double().std().item())
    assert (latents * factor).std().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="cannot scale them"):
        latent_scaling_factor(torch.ones(10, 4))
    with pytest.raises(ValueError, match="at least two latents"):
        latent_scaling_factor(torch.ones(1))


def test_a_latent_space_scales_on_the_way_in_and_unscales_on_the_way_out(fashion):
    images, _ = fashion
    space = tiny_space(scale=2.5)
    z = space.encode(images[:4], batch_size=3)
    assert z.shape == (4, 4, 8, 8) and z.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(z, 2.5 * space.autoencoder.encode(images[:4]).mean)
    decoded = space.decode(z, batch_size=3)
    torch.testing.assert_close(decoded, space.autoencoder.reconstruct(images[:4]))  # the scale cancels
    assert decoded.shape == (4, 1, 28, 28) and decoded.abs().max() <= 1
    assert space.config() == LatentConfig((4, 8, 8), (1, 28, 28), 2.5, "vae-test")
    again = LatentSpace.from_checkpoint({"autoencoder": space.state()})
    assert (again.scaling_factor, again.key) == (2.5, "vae-test")
    torch.testing.assert_close(again.decode(z), decoded)
    with pytest.raises(CheckpointError, match="holds no autoencoder weights"):
        LatentSpace.from_checkpoint({})


# -- caches -------------------------------------------------------------------------------------


def test_the_autoencoder_is_trained_once_per_data_and_recipe_then_read_from_the_cache(fashion, tmp_path, monkeypatch):
    images, labels = fashion
    trained = []
    real_train = latent_module.train_autoencoder
    monkeypatch.setattr(latent_module, "train_autoencoder", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    first = course_autoencoder(images, labels, recipe(), root=tmp_path, progress=False)
    assert len(trained) == 1 and first.key.startswith("vae-fashion-mnist-")
    assert (tmp_path / f"{first.key}.pt").is_file()
    # the training images' latents were cached with it, scaled to unit std
    cached = dataset_latents(first, images, labels, root=tmp_path)
    assert cached.shape == (32, 4, 8, 8) and cached.std().item() == pytest.approx(1.0, abs=1e-4)

    second = course_autoencoder(images, labels, recipe(), root=tmp_path, progress=False)
    assert len(trained) == 1 and second.key == first.key and second.scaling_factor == first.scaling_factor
    torch.testing.assert_close(second.encode(images), first.encode(images))

    course_autoencoder(images[:16], labels[:16], recipe(), root=tmp_path, progress=False)  # other data
    course_autoencoder(images, labels, recipe(kl_weight=1e-3), root=tmp_path, progress=False)  # other recipe
    assert len(trained) == 3
    with pytest.raises(AutoencoderUnavailable, match="no trained autoencoder"):
        course_autoencoder(images, labels, recipe(seed=5), root=tmp_path, train=False)


def test_dataset_latents_are_encoded_once(fashion, tmp_path, monkeypatch):
    images, labels = fashion
    space = tiny_space()
    first = dataset_latents(space, images, labels, root=tmp_path)
    monkeypatch.setattr(LatentSpace, "encode", lambda *a, **k: pytest.fail("encoded again"))
    torch.testing.assert_close(dataset_latents(space, images, labels, root=tmp_path), first)
    monkeypatch.undo()
    rescaled = LatentSpace(space.autoencoder, 5.0, space.key)  # same key, another scale: not reused
    torch.testing.assert_close(dataset_latents(rescaled, images, labels, root=tmp_path), first * 5.0 / 2.0)


# -- the objective wrapper and the records -------------------------------------------------------


def test_the_latent_objective_trains_as_before_and_records_what_a_sampler_needs(fashion):
    space = tiny_space()
    inner = DiffusionObjective(DiffusionConfig(timesteps=20))
    objective = LatentObjective(inner, space)
    model = UNet.from_preset("tiny", image_size=8, in_channels=4, out_channels=4)
    z = space.encode(fashion[0][:4])
    a = objective(model, z, None, torch.Generator().manual_seed(0))
    b = DiffusionObjective(DiffusionConfig(timesteps=20))(model, z, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.loss, b.loss)
    records = objective.records()
    recorded = DiffusionConfig.from_dict(records["diffusion_config"])
    assert recorded.latent == space.config() and not recorded.clip_x0
    assert records["autoencoder"]["scaling_factor"] == 2.0 and "weights" in records["autoencoder"]
    preview = objective.preview(model, (3, 4, 8, 8), torch.Generator().manual_seed(0), steps=3)
    assert preview.shape == (3, 1, 28, 28) and preview.abs().max() <= 1
    raw = inner.preview(model, (3, 4, 8, 8), torch.Generator().manual_seed(0), steps=3)
    assert raw.abs().max() > 1  # latents: neither clipped nor clamped before decoding
    torch.testing.assert_close(space.decode(raw), preview)


def test_diffusion_configs_with_and_without_a_latent_entry_round_trip():
    old = {"schedule": "cosine", "timesteps": 100, "prediction": "eps", "variance": "fixed_small",
           "conditioning": "none", "num_classes": None}
    assert DiffusionConfig.from_dict(old).latent is None and DiffusionConfig.from_dict(old).clip_x0
    config = DiffusionConfig(latent=LatentConfig([4, 8, 8], [1, 28, 28], 0.5, "k"))
    plain = {**config.to_dict(), "latent": {"shape": [4, 8, 8], "image_shape": [1, 28, 28],
                                            "scaling_factor": 0.5, "autoencoder": "k"}}
    assert DiffusionConfig.from_dict(plain) == config and config.latent.shape == (4, 8, 8)
    with pytest.raises(ValueError, match="latent needs the keys"):
        DiffusionConfig(latent={"shape": [4, 8, 8]})
    with pytest.raises(ValueError, match="three positive integers"):
        LatentConfig((4, 8), (1, 28, 28), 1.0)
    with pytest.raises(ValueError, match="scaling_factor must be positive"):
        LatentConfig((4, 8, 8), (1, 28, 28), 0.0)


def test_latent_runs_never_flip_and_refuse_flips():
    assert resolve_hflip(TrainConfig(dataset="cifar10")) is True
    assert resolve_hflip(TrainConfig(dataset="cifar10", latent=True)) is False
    with pytest.raises(ValueError, match="hflip='on' does not work with latent"):
        TrainConfig(latent=True, hflip="on").validate()
    with pytest.raises(ValueError, match="vae_epochs must be positive"):
        TrainConfig(latent=True, vae_epochs=0).validate()


# -- end to end through the command lines and the pipeline ----------------------------------------


def test_a_latent_run_trains_samples_and_evaluates_through_the_clis_and_the_pipeline(
    in_data_root, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert train_main([*QUICK, "--max-steps", "2", "--out", str(out), "--sample-every", "2", "--sample-count", "4",
                       "--sample-steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "latents=4x8x8" in printed and "shape=1x28x28" in printed
    state = load_checkpoint(out / "checkpoint.pt")
    latent = state["diffusion_config"]["latent"]
    assert latent["shape"] == [4, 8, 8] and latent["image_shape"] == [1, 28, 28]
    assert latent["scaling_factor"] == state["autoencoder"]["scaling_factor"] > 0
    assert (in_data_root / "autoencoders" / f"{latent['autoencoder']}.pt").is_file()
    assert state["data_stats"]["latent"]["std"] == pytest.approx(1.0, abs=1e-4)
    assert (state["model_config"]["in_channels"], state["model_config"]["image_size"]) == (4, 8)
    assert (out / "samples" / "step_0000002.png").is_file()  # decoded preview

    model, diffusion, _ = load_model(out / "checkpoint.pt")
    assert diffusion.latent.shape == (4, 8, 8) and not diffusion.clip_x0
    pipe = DiffusionPipeline.from_checkpoint(out / "checkpoint.pt")
    assert pipe.image_shape == (1, 28, 28) and pipe.sample_shape == (4, 8, 8)
    images = pipe.generate(3, steps=4, seed=1)
    assert images.shape == (3, 1, 28, 28) and images.abs().max() <= 1
    latents = pipe.generate(3, steps=4, seed=1, decode=False)
    assert latents.shape == (3, 4, 8, 8)
    assert latents.abs().max() > 1  # sampled without clipping x0 to [-1, 1]
    torch.testing.assert_close(pipe.latent.decode(latents), images)
    # editing works on the latents: encoded, SDEdit, decoded; inpainting (pixels kept exactly) is refused
    edited = pipe.edit(images, 0.5, steps=2, seed=3)
    from diffusion_course.sampling import sdedit

    by_hand = sdedit(pipe.model, pipe.schedule, pipe.latent.encode(images), 0.5, steps=2, clip_x0=False,
                     generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(edited, pipe.latent.decode(by_hand))
    assert torch.equal(pipe.edit(images, 0.0), images)
    with pytest.raises(ValueError, match="inpainting needs a pixel-space model"):
        pipe.inpaint(images, torch.ones(1, 1, 28, 28))

    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    assert sample_main(["--checkpoint", str(out / "checkpoint.pt"), "--num-samples", "3", "--steps", "4",
                        "--seed", "1", "--out", str(png), "--save-npz", str(npz), "--no-progress",
                        "--device", "cpu"]) == 0
    assert "4x8x8 latent space" in capsys.readouterr().err and png.is_file()
    saved = np.load(npz)["images"]
    assert saved.shape == (3, 28, 28, 1)
    expected = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(saved, expected)

    # evaluate scores decoded images (a small untrained classifier stands in for the course's)
    seen = []

    class Features(ClassifierFeatures):
        def __call__(self, images, batch_size=500):
            seen.append(images.shape)
            return super().__call__(images, batch_size)

    torch.manual_seed(0)
    stand_in = Features(build_classifier("fashion-mnist", 1, 28, 10, widths=(8, 16)), "fashion-mnist", "stub", 0.1)
    monkeypatch.setattr(features, "get_extractor", lambda *a, **k: stand_in)
    report = tmp_path / "eval.json"
    assert evaluate_main(["--checkpoint", str(out / "checkpoint.pt"), "--num-samples", "6", "--steps", "2",
                          "--real", "8", "--json", str(report), "--out", str(tmp_path / "e.png"), "--no-progress",
                          "--device", "cpu"]) == 0
    assert torch.Size([6, 1, 28, 28]) in seen and json.loads(report.read_text())["num_samples"] == 6


def test_a_resumed_latent_run_is_bit_exact_with_a_straight_one(in_data_root, tmp_path, monkeypatch):
    assert train_main([*QUICK, "--max-steps", "4", "--out", str(tmp_path / "straight")]) == 0
    assert train_main([*QUICK, "--max-steps", "2", "--out", str(tmp_path / "split")]) == 0
    # the resumed run decodes with the checkpoint's own autoencoder: no cache, no retraining
    for entry in (in_data_root / "autoencoders").glob("*.pt"):
        entry.unlink()
    monkeypatch.setattr(latent_module, "train_autoencoder", lambda *a, **k: pytest.fail("trained a new VAE"))
    assert train_main([*QUICK, "--max-steps", "4", "--out", str(tmp_path / "split"), "--resume"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_bad_latent_input_ends_with_one_line_and_exit_2(in_data_root, tmp_path, capsys):
    assert train_main([*QUICK, "--max-steps", "1", "--hflip", "on", "--out", str(tmp_path / "a")]) == 2
    assert "hflip='on' does not work with latent" in capsys.readouterr().err
    assert train_main([*QUICK, "--max-steps", "1", "--vae-epochs", "0", "--out", str(tmp_path / "b")]) == 2
    assert "vae_epochs must be positive" in capsys.readouterr().err
    # a latent checkpoint that lost its autoencoder cannot be decoded: refused, not guessed
    out = tmp_path / "run"
    assert train_main([*QUICK, "--max-steps", "1", "--out", str(out)]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    del state["autoencoder"]
    save_checkpoint(state, tmp_path / "broken.pt")
    capsys.readouterr()
    assert sample_main(["--checkpoint", str(tmp_path / "broken.pt"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no autoencoder weights" in err
    assert not (tmp_path / "x.png").exists()


def test_a_pipeline_refuses_a_latent_model_without_its_latent_space():
    model = UNet.from_preset("tiny", image_size=8, in_channels=4, out_channels=4)
    latent = DiffusionConfig(timesteps=10, latent=tiny_space().config())
    with pytest.raises(ValueError, match="needs its LatentSpace"):
        DiffusionPipeline(model, latent, (1, 28, 28), torch.device("cpu"))
    with pytest.raises(ValueError, match="needs its LatentSpace"):
        DiffusionPipeline(model, DiffusionConfig(timesteps=10), (1, 28, 28), torch.device("cpu"), latent=tiny_space())


def test_under_torchrun_rank_0_trains_and_encodes_while_the_others_wait_and_read_the_cache(
    fashion, in_data_root, monkeypatch
):
    import torch.distributed as dist

    from diffusion_course.distributed import DistInfo

    images, labels = fashion
    config = TrainConfig(dataset="fashion-mnist", latent=True, vae_epochs=1)
    events = []
    monkeypatch.setattr(dist, "barrier", lambda: events.append("barrier"))
    real_train = latent_module.train_autoencoder
    monkeypatch.setattr(latent_module, "train_autoencoder",
                        lambda *a, **k: events.append("train") or real_train(*a, **k))

    (z0, _), stats, space0 = latent_module.latent_training_data(config, (images, labels), {}, info=DistInfo(0, 2),
                                                                progress=False)
    assert events == ["train", "barrier"]  # rank 0 fills the cache, then lets the others go
    events.clear()
    (z1, _), _, space1 = latent_module.latent_training_data(config, (images, labels), {}, info=DistInfo(1, 2),
                                                            progress=False)
    assert events == ["barrier"]  # rank 1 waits first, then only reads
    torch.testing.assert_close(z1, z0)
    assert space1.key == space0.key and stats["latent"]["shape"] == [4, 8, 8]
    other = TrainConfig(dataset="fashion-mnist", latent=True, vae_epochs=2)  # nothing cached: never trains itself
    with pytest.raises(AutoencoderUnavailable):
        latent_module.latent_training_data(other, (images, labels), {}, info=DistInfo(1, 2), progress=False)
    with pytest.raises(ValueError, match="needs a dataset that fits in memory"):
        latent_module.latent_training_data(config, torch.utils.data.TensorDataset(images), {})
