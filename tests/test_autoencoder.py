"""The VAE of latent diffusion: shapes, the KL and the loss against references, training, files."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from diffusion_course.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    AutoencoderRecipe,
    DiagonalGaussian,
    VAEObjective,
    autoencoder_config,
    fingerprint,
    load_autoencoder,
    reconstruction_error,
    save_autoencoder,
    train_autoencoder,
)
from diffusion_course.checkpoint import CheckpointError, save_checkpoint
from diffusion_course.data import load_tensors
from diffusion_course.trainer import Trainer
from diffusion_course.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(base_channels=8, channel_mults=(1, 2, 2), norm_groups=4)
"""An autoencoder small enough to train in seconds (same 4x8x8 latents as the real preset)."""


@pytest.fixture(scope="module")
def fashion():
    images, labels = load_tensors("fashion-mnist", limit=32, progress=False)
    return images, labels


def tiny(**overrides) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(autoencoder_config("fashion-mnist", 1, 28, **{**TINY, **overrides}))


# -- shapes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "channels", "size", "padded", "latent"),
    [("fashion-mnist", 1, 28, 32, (4, 8, 8)), ("mnist", 1, 28, 32, (4, 8, 8)), ("cifar10", 3, 32, 32, (4, 16, 16))],
)
def test_presets_pad_to_a_latent_grid_the_unet_presets_can_halve_twice(dataset, channels, size, padded, latent):
    config = autoencoder_config(dataset, channels, size)
    assert (config.padded_size, config.latent_shape) == (padded, latent)
    assert config.latent_size % 4 == 0  # tiny and small U-Nets downsample twice
    model = Autoencoder(config)
    x = torch.rand(2, channels, size, size) * 2 - 1
    posterior = model.encode(x)
    assert posterior.mean.shape == posterior.log_var.shape == (2, *latent)
    assert model.decode(posterior.mean).shape == x.shape
    x_hat, mean, log_var = model(x, torch.Generator().manual_seed(0))
    assert x_hat.shape == x.shape and mean.shape == (2, *latent)


def test_padding_rule_rounds_the_side_up_to_a_multiple_of_f_times_latent_multiple():
    assert AutoencoderConfig(image_size=28, channel_mults=(1, 2, 4), latent_multiple=4).padded_size == 32
    assert AutoencoderConfig(image_size=28, channel_mults=(1, 2), latent_multiple=1).padded_size == 28
    assert AutoencoderConfig(image_size=33, channel_mults=(1, 2, 4), latent_multiple=2).padded_size == 40
    assert AutoencoderConfig(image_size=64, channel_mults=(1, 2, 2, 4)).latent_shape == (4, 8, 8)


class _Spy(torch.nn.Module):
    """Records its input and returns a fixed output."""

    def __init__(self, output):
        super().__init__()
        self.output, self.seen = output, None

    def forward(self, x):
        self.seen = x
        return self.output


def test_images_are_padded_with_their_edge_pixels_and_decoded_images_cropped_back():
    model = tiny()
    model.encoder = _Spy(torch.zeros(1, 8, 8, 8))
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model.encode(x)
    padded = model.encoder.seen
    assert padded.shape == (1, 1, 32, 32)
    torch.testing.assert_close(padded[..., 2:30, 2:30], x)  # centred
    torch.testing.assert_close(padded[..., :2, 2:30], x[..., :1, :].expand(-1, -1, 2, -1))  # edge rows repeated
    torch.testing.assert_close(padded[..., 2:30, 30:], x[..., :, -1:].expand(-1, -1, -1, 2))  # edge columns
    pattern = torch.arange(32 * 32.0).reshape(1, 1, 32, 32)
    model.decoder = _Spy(pattern)
    torch.testing.assert_close(model.decode(torch.zeros(1, 4, 8, 8)), pattern[..., 2:30, 2:30])


def test_bad_input_is_a_one_line_error_naming_the_shape():
    model = tiny()
    with pytest.raises(ValueError, match=r"images of shape \[B, 1, 28, 28\], got \(2, 3, 28, 28\)"):
        model.encode(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"latents of shape \[B, 4, 8, 8\], got \(2, 4, 7, 7\)"):
        model.decode(torch.zeros(2, 4, 7, 7))
    with pytest.raises(ValueError, match="unknown autoencoder setting"):
        autoencoder_config("fashion-mnist", 1, 28, widths=(1, 2))
    with pytest.raises(ValueError, match="not divisible by norm_groups"):
        AutoencoderConfig(base_channels=12, norm_groups=8)
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        VAEObjective(kl_weight=-1.0)
    with pytest.raises(ValueError, match="unknown reconstruction 'l2'"):
        VAEObjective(reconstruction="l2")


# -- the posterior and the loss --------------------------------------------------------


def test_kl_matches_torch_distributions_and_sampling_is_reparameterised():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 2, 2, generator=gen)
    log_var = torch.randn(3, 4, 2, 2, generator=gen)
    q = DiagonalGaussian(mean, log_var)
    reference = kl_divergence(Normal(mean, (0.5 * log_var).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), reference)
    assert torch.all(DiagonalGaussian(torch.zeros(1, 4), torch.zeros(1, 4)).kl() == 0)  # q = prior

    mean.requires_grad_(True)
    z = DiagonalGaussian(mean, log_var).sample(torch.Generator().manual_seed(1))
    z.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones_like(mean))  # dz/dmean = 1
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z, mean + (0.5 * log_var).exp() * eps)  # z = mean + std * eps


def test_log_variance_is_clamped_so_the_std_stays_finite():
    q = DiagonalGaussian(torch.zeros(1, 2), torch.tensor([[-1e4, 1e4]]))
    assert torch.isfinite(q.std).all() and torch.isfinite(q.kl()).all()
    assert q.log_var.tolist() == [[-30.0, 20.0]]


class _Fixed(torch.nn.Module):
    """Returns given outputs, so the loss can be computed by hand."""

    def __init__(self, x_hat, mean, log_var):
        super().__init__()
        self.out = (x_hat, mean, log_var)

    def forward(self, x, generator=None):
        return self.out


@pytest.mark.parametrize("reconstruction", ["l1", "mse"])
def test_vae_loss_is_per_pixel_reconstruction_plus_beta_kl(reconstruction):
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 4, 4, generator=gen) * 2 - 1
    x_hat = torch.rand(2, 1, 4, 4, generator=gen) * 2 - 1
    mean, log_var = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    beta = 0.01
    out = VAEObjective(kl_weight=beta, reconstruction=reconstruction)(_Fixed(x_hat, mean, log_var), x, None, gen)
    err = (x_hat - x).flatten(1)
    rec = err.abs().sum(1) if reconstruction == "l1" else err.pow(2).sum(1)
    kl = 0.5 * (mean**2 + log_var.exp() - 1 - log_var).flatten(1).sum(1)
    torch.testing.assert_close(out.loss, ((rec + beta * kl) / 16).mean())
    torch.testing.assert_close(out.logs["l1"], err.abs().mean(1))
    torch.testing.assert_close(out.logs["mse"], err.pow(2).mean(1))
    torch.testing.assert_close(out.logs["kl"], kl / 36)  # nats per latent value


# -- training ---------------------------------------------------------------------------


def _train(images, labels, tmp_path, name, **recipe):
    recipe = AutoencoderRecipe(epochs=recipe.pop("epochs", 24), batch_size=16, lr=3e-3, warmup_steps=0,
                               overrides=TINY, **recipe)
    return train_autoencoder(images, labels, recipe, out=tmp_path / name, progress=False)


def test_the_vae_learns_to_reconstruct_a_tiny_dataset(fashion, tmp_path):
    images, labels = fashion
    before = reconstruction_error(tiny(), images)
    model = _train(images, labels, tmp_path, "vae")
    after = reconstruction_error(model, images)
    # far better than before, and better than predicting every pixel's mean over the set
    assert after["mse"] < 0.25 * before["mse"]
    assert after["mse"] < 0.5 * images.var(dim=0).mean().item()
    assert after["psnr"] > 14
    records = [line for line in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) >= 1 and '"kl"' in records[0] and '"l1"' in records[0]
    assert (tmp_path / "vae" / "samples").is_dir()  # the reconstruction preview of the end of the run


def test_a_larger_kl_weight_pulls_the_posterior_towards_the_prior(fashion, tmp_path):
    images, labels = fashion

    def kl_per_value(model):
        with torch.no_grad():
            return (model.encode(images).kl() / 256).mean().item()

    loose = _train(images, labels, tmp_path, "loose", kl_weight=0.0, epochs=8)
    tight = _train(images, labels, tmp_path, "tight", kl_weight=1.0, epochs=8)
    assert kl_per_value(tight) < 0.5 * kl_per_value(loose)


def test_the_trainer_previews_images_above_their_reconstructions(fashion, tmp_path):
    images, labels = fashion
    config = TrainConfig(dataset="fashion-mnist", batch_size=8, max_steps=1, sample_every=0, sample_count=6,
                         out=str(tmp_path), progress=False, warmup_steps=0, device="cpu")
    objective = VAEObjective(preview_images=images[:5])
    trainer = Trainer(config, tiny(), (images, labels), objective=objective)
    trainer.train()
    grid = trainer.preview()
    assert grid.shape == (6, 1, 28, 28)
    torch.testing.assert_close(grid[:3], images[:3])
    torch.testing.assert_close(grid[3:], trainer.ema.module.reconstruct(images[:3]))
    # without given images, the first batch seen is shown
    lazy = VAEObjective()
    assert lazy.preview(tiny(), (4, 1, 28, 28), torch.Generator()) is None
    lazy(tiny(), images[:4], labels[:4], torch.Generator())
    torch.testing.assert_close(lazy.preview(tiny(), (4, 1, 28, 28), torch.Generator())[:2], images[:2])


# -- files and numbers --------------------------------------------------------------------


def test_save_and_load_round_trip_and_foreign_files_are_refused(tmp_path):
    model = tiny()
    path = save_autoencoder(model, tmp_path / "vae.pt", scaling_factor=0.5, key="k")
    loaded, state = load_autoencoder(path)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x))
    assert loaded.config == model.config and state["scaling_factor"] == 0.5 and state["key"] == "k"
    save_checkpoint({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="holds no autoencoder"):
        load_autoencoder(tmp_path / "other.pt")
    state["config"]["latent_channels"] = 8
    save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit its config"):
        load_autoencoder(tmp_path / "bad.pt")


def test_reconstruction_error_is_per_pixel_mse_l1_and_psnr_for_range_two():
    class OffByATenth(Autoencoder):
        def reconstruct(self, x):
            return x + 0.1

    model = OffByATenth(AutoencoderConfig(**TINY))
    errors = reconstruction_error(model, torch.zeros(3, 1, 28, 28), batch_size=2)
    assert errors["mse"] == pytest.approx(0.01) and errors["l1"] == pytest.approx(0.1)
    assert errors["psnr"] == pytest.approx(10 * math.log10(4 / 0.01))


def test_fingerprint_changes_with_images_labels_and_recipe():
    images, labels = torch.zeros(4, 1, 2, 2), torch.arange(4)
    base = fingerprint(images, labels, AutoencoderRecipe())
    assert base == fingerprint(images.clone(), labels.clone(), AutoencoderRecipe())
    assert base != fingerprint(images + 1e-3, labels, AutoencoderRecipe())
    assert base != fingerprint(images, labels.flip(0), AutoencoderRecipe())
    assert base != fingerprint(images, labels, AutoencoderRecipe(epochs=6))
    assert fingerprint(images) != fingerprint(images.reshape(4, 1, 1, 4))
