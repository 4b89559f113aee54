"""Pictures: image grids, the forward process as a strip, and schedule curves.

Every function returns the matplotlib ``Figure`` it drew (and never calls ``plt.show``),
so notebooks display it and tests can inspect it. Images are expected as tensors in
[-1, 1], the range the whole course uses, shaped ``[B, C, H, W]`` or ``[C, H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .diffusion import q_sample
from .schedules import NoiseSchedule, get_schedule


def to_display(images: torch.Tensor) -> np.ndarray:
    """Map images from [-1, 1] to a NumPy array in [0, 1] ready for ``imshow``.

    Args:
        images: ``[C, H, W]`` or ``[B, C, H, W]`` float tensor (values outside [-1, 1]
            are clipped, as a noised image at large t has them).

    Returns:
        ``[H, W]`` for one grey image, ``[H, W, 3]`` for one colour image, or the batch
        version with a leading ``B``.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError("images must be a torch.Tensor in [-1, 1]")
    x = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape [B, 1|3, H, W] or [1|3, H, W], got {tuple(images.shape)}")
    x = x.permute(0, 2, 3, 1).numpy()
    if x.shape[-1] == 1:
        x = x[..., 0]
    return x[0] if images.ndim == 3 else x


def save_image_grid(images: torch.Tensor, path, nrow: int | None = None) -> None:
    """Write images ``[B, C, H, W]`` in [-1, 1] as one PNG grid (``nrow`` per row; default sqrt(B))."""
    from torchvision.utils import save_image

    if nrow is None:
        nrow = max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    save_image(images.detach().float().cpu().add(1).div(2).clamp(0, 1), str(path), nrow=nrow)


def show_images(
    images: torch.Tensor,
    nrow: int | None = None,
    title: str | None = None,
    labels: Sequence[str] | None = None,
    size: float = 1.2,
) -> Figure:
    """Show a batch of images ``[B, C, H, W]`` in [-1, 1] as a grid of small panels.

    With ``labels`` each panel gets a caption (e.g. class names).
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    b = images.shape[0]
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    ncol = math.ceil(b / nrow)
    fig, axes = plt.subplots(ncol, nrow, figsize=(size * nrow, size * ncol + (0.4 if title else 0)))
    axes = np.atleast_1d(axes).ravel()
    pictures = to_display(images)
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < b:
            ax.imshow(pictures[i], cmap="gray" if pictures[i].ndim == 2 else None, vmin=0, vmax=1)
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def forward_process_strip(
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] = (0, 50, 100, 250, 500, 750, 999),
    generator: torch.Generator | None = None,
    size: float = 1.5,
) -> Figure:
    """Draw one image noised to several timesteps, left to right, with alpha-bar under each.

    Args:
        x0: one image ``[C, H, W]`` or a batch ``[B, C, H, W]`` (one row per image), in [-1, 1].
        schedule: the schedule used to noise.
        timesteps: which t to show; each must be in ``[0, T-1]``.
        generator: makes the noise reproducible. The *same* noise is used for every t, so
            the strip shows one path getting noisier, not unrelated samples.
    """
    if x0.ndim == 3:
        x0 = x0.unsqueeze(0)
    ts = [int(t) for t in timesteps]
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    rows, cols = x0.shape[0], len(ts)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.3), squeeze=False)
    for j, t in enumerate(ts):
        tt = torch.full((rows,), t, dtype=torch.long)
        xt = q_sample(x0, tt, noise, schedule)
        pictures = to_display(xt)
        for i in range(rows):
            ax = axes[i, j]
            ax.imshow(pictures[i], cmap="gray" if pictures[i].ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t={t}", fontsize=9)
            if i == rows - 1:
                ax.set_xlabel(f"ᾱ={schedule.alphas_cumprod[t].item():.3f}", fontsize=8)
    fig.suptitle(f"forward process, {schedule.name} schedule")
    fig.tight_layout()
    return fig


def plot_schedules(
    schedules: Sequence[NoiseSchedule | str] = ("linear", "cosine", "sigmoid"),
    timesteps: int = 1000,
) -> Figure:
    """Plot alpha-bar_t and log SNR(t) for several schedules side by side.

    ``schedules`` may hold :class:`NoiseSchedule` objects or names (built with
    ``timesteps`` steps). The x axis is t / T so schedules of different lengths compare.
    """
    fig, (ax_ab, ax_snr) = plt.subplots(1, 2, figsize=(10, 3.6))
    for item in schedules:
        s = get_schedule(item, timesteps) if isinstance(item, str) else item
        u = np.arange(s.timesteps) / s.timesteps
        ax_ab.plot(u, s.alphas_cumprod.numpy(), label=s.name)
        ax_snr.plot(u, s.log_snr().numpy(), label=s.name)
    ax_ab.set(xlabel="t / T", ylabel="ᾱ_t (signal kept)", title="ᾱ_t = ∏ (1 - β_s)")
    ax_snr.set(xlabel="t / T", ylabel="log SNR(t)", title="log SNR = log ᾱ / (1 - ᾱ)")
    ax_snr.axhline(0.0, color="grey", lw=0.8, ls=":")
    for ax in (ax_ab, ax_snr):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def noise_histogram(
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] = (0, 250, 500, 999),
    generator: torch.Generator | None = None,
) -> Figure:
    """Histogram of pixel values of ``x0`` noised to several t, against N(0, 1).

    Shows the marginal of x_t drifting from the data distribution to a standard normal.
    """
    if x0.ndim == 3:
        x0 = x0.unsqueeze(0)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(-4, 4, 81)
    for t in timesteps:
        xt = q_sample(x0, torch.full((x0.shape[0],), int(t), dtype=torch.long), noise, schedule)
        ax.hist(xt.flatten().numpy(), bins=bins, density=True, histtype="step", label=f"t={t}")
    grid = np.linspace(-4, 4, 200)
    ax.plot(grid, np.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi), "k--", lw=1, label="N(0, 1)")
    ax.set(xlabel="pixel value", ylabel="density", title="x_t drifts towards N(0, I)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Signal and noise: SNR and the loss weighting it leads to
# ---------------------------------------------------------------------------


def plot_snr_weighting(
    schedules: Sequence[NoiseSchedule | str] = ("linear", "cosine"),
    gamma: float = 5.0,
    timesteps: int = 1000,
) -> Figure:
    """log SNR(t) against min-SNR's clamp (left) and the weight min-SNR puts on the eps loss (right).

    Predicting eps and scoring it with the MSE weighs the x0 error of step t by SNR(t); min-SNR
    (Hang et al. 2023) caps that weight at ``gamma``, i.e. multiplies the eps MSE by
    ``min(SNR, gamma) / SNR`` (:func:`~diffusion_course.losses.min_snr_weights`).
    """
    from .losses import min_snr_weights

    fig, (ax_snr, ax_w) = plt.subplots(1, 2, figsize=(10, 3.4))
    for item in schedules:
        s = get_schedule(item, timesteps) if isinstance(item, str) else item
        t = torch.arange(s.timesteps)
        ax_snr.plot(t.numpy(), s.log_snr().numpy(), label=s.name)
        ax_w.plot(t.numpy(), min_snr_weights(t, s, "eps", gamma).numpy(), label=s.name)
    ax_snr.axhline(math.log(gamma), color="red", lw=1, ls="--", label=f"log γ (γ = {gamma:g})")
    ax_snr.set(xlabel="t", ylabel="log SNR(t)", title="SNR above γ: the easy, almost clean steps")
    ax_w.set(xlabel="t", ylabel="weight on the ε-MSE", title=f"min-SNR-{gamma:g}: min(SNR, γ) / SNR",
             ylim=(0, 1.05))
    for ax in (ax_snr, ax_w):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Toy distributions: the reverse step, the score field and Tweedie's formula
# ---------------------------------------------------------------------------


def plot_reverse_step(marginal, x_t: float, betas: Sequence[float] = (0.001, 0.05, 0.5)) -> Figure:
    """The true reverse step q(x_{t-1} | x_t) of a 1-D mixture, next to the Gaussian with its moments.

    Args:
        marginal: a one-dimensional :class:`~diffusion_course.mixtures.GaussianMixture`, the law
            of ``x_{t-1}``.
        x_t: the noisy value observed after one forward step.
        betas: the step's variance in each panel; ``x_t = sqrt(1 - beta) x_{t-1} + sqrt(beta) eps``.

    The first panel shows ``p(x_{t-1})`` and ``x_t``; each further panel the exact reverse density
    (:meth:`~diffusion_course.mixtures.GaussianMixture.posterior` with alpha-bar = 1 - beta, a
    mixture) as a solid line and the Gaussian with the same mean and variance dashed.
    """
    if marginal.dim != 1:
        raise ValueError(f"plot_reverse_step draws one-dimensional mixtures, got dimension {marginal.dim}")
    fig, axes = plt.subplots(1, 1 + len(betas), figsize=(3.1 * (1 + len(betas)), 2.8))
    sd = float(marginal.variance().sqrt())
    grid = torch.linspace(float(marginal.mean()) - 4 * sd, float(marginal.mean()) + 4 * sd, 400, dtype=torch.float64)
    axes[0].plot(grid.numpy(), marginal.log_prob(grid[:, None]).exp().numpy(), color="grey")
    axes[0].axvline(x_t, color="red", lw=1, label=f"x_t = {x_t:g}")
    axes[0].set(title="p(x_{t-1})", xlabel="x_{t-1}")
    axes[0].legend(fontsize=8)
    for ax, beta in zip(axes[1:], betas, strict=True):
        post = marginal.posterior(torch.tensor([float(x_t)]), 1.0 - float(beta))
        mu, var = float(post.mean()), float(post.variance())
        xs = torch.linspace(mu - 4.5 * math.sqrt(var), mu + 4.5 * math.sqrt(var), 400, dtype=torch.float64)
        ax.plot(xs.numpy(), post.log_prob(xs[:, None]).exp().numpy(), lw=2, label="true q(x_{t-1} | x_t)")
        gauss = torch.exp(-((xs - mu) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
        ax.plot(xs.numpy(), gauss.numpy(), "k--", lw=1, label="Gaussian, same mean and variance")
        ax.set(title=f"β = {beta:g}", xlabel="x_{t-1}", yticks=[])
    axes[1].legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    return fig


def _toy_grid(lim: float, n: int) -> torch.Tensor:
    side = torch.linspace(-lim, lim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(side, side, indexing="xy")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def _toy_density(density, lim: float, resolution: int = 64) -> np.ndarray:
    """The density of a 2-D mixture on a ``resolution``-square grid over ``[-lim, lim]^2``."""
    pts = _toy_grid(lim, resolution)
    return density.log_prob(pts).exp().reshape(resolution, resolution).numpy()


def _show_density(ax, values: np.ndarray, lim: float) -> None:
    ax.imshow(values, origin="lower", extent=(-lim, lim, -lim, lim), cmap="Greys", alpha=0.6)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])


def plot_score_field(
    data,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] = (50, 250, 500, 800),
    model: torch.nn.Module | None = None,
    grid: int = 15,
    lim: float = 1.5,
    shrink: float = 0.25,
) -> Figure:
    """The score of the noisy marginal p_t on a grid of points: learned (top row) and exact (bottom).

    Args:
        data: a 2-D :class:`~diffusion_course.mixtures.GaussianMixture`, the clean data.
        schedule: the noise schedule; ``timesteps`` are the columns.
        model: an eps-predicting network ``model(x_t [B, 2], t [B])`` (e.g.
            :class:`~diffusion_course.toy2d.ToyDenoiser`); ``None`` draws the exact field only.
        grid: arrows per side; lim: the square ``[-lim, lim]^2`` drawn.
        shrink: arrows are drawn at this fraction of their length, so that they do not cross.

    Each arrow is ``shrink * (1 - alpha_bar_t) * score``, in data units: by Tweedie's formula
    ``(1 - alpha_bar_t) * score`` goes from ``x_t`` to ``sqrt(alpha_bar_t) * E[x_0 | x_t]``.
    The grey background is the exact density of p_t.
    """
    from .toy2d import denoise

    rows = ["learned", "exact"] if model is not None else ["exact"]
    cols = len(timesteps)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.7 * cols, 2.7 * len(rows) + 0.4), squeeze=False,
                             layout="constrained")
    pts = _toy_grid(lim, grid)
    for j, t in enumerate(int(t) for t in timesteps):
        alpha_bar = schedule.alphas_cumprod[t].item()
        marginal = data.noised(alpha_bar)
        background = _toy_density(marginal, lim)
        for i, row in enumerate(rows):
            if row == "learned":
                score, _ = denoise(model, pts.float(), t, schedule)
                score = score.double()
            else:
                score = marginal.score(pts)
            arrows = (shrink * (1 - alpha_bar) * score).numpy()
            ax = axes[i, j]
            _show_density(ax, background, lim)
            ax.quiver(pts[:, 0].numpy(), pts[:, 1].numpy(), arrows[:, 0], arrows[:, 1], angles="xy",
                      scale_units="xy", scale=1, width=0.006, color="tab:blue" if row == "learned" else "tab:red")
            if i == 0:
                ax.set_title(f"t = {t}, ᾱ = {alpha_bar:.2f}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{row} score", fontsize=9)
    fig.suptitle(f"(1 - ᾱ_t) · score of p_t, drawn at {shrink:g} of its length: where x_t probably came from")
    return fig


def plot_tweedie(
    data,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] = (150, 500, 900),
    model: torch.nn.Module | None = None,
    n: int = 40,
    generator: torch.Generator | None = None,
    lim: float = 1.6,
) -> Figure:
    """Tweedie's formula at work: arrows from noisy points x_t to the denoised guess x̂_0.

    Args:
        data: a 2-D :class:`~diffusion_course.mixtures.GaussianMixture`.
        schedule: the noise schedule; one panel per entry of ``timesteps``.
        model: an eps-predicting network; its x̂_0 (:func:`~diffusion_course.toy2d.denoise`) gives
            the arrows. ``None``: the exact posterior mean gives them.
        n: noisy points per panel, drawn from p_t with ``generator``.

    Grey: the data; blue dots: x_t; arrows: x_t -> x̂_0; red crosses: the exact E[x_0 | x_t]
    (:meth:`~diffusion_course.mixtures.GaussianMixture.posterior_mean`); star: the data mean.
    """
    from .toy2d import denoise

    fig, axes = plt.subplots(1, len(timesteps), figsize=(3.2 * len(timesteps), 3.9), squeeze=False,
                             layout="constrained")
    cloud = data.sample(1500, generator=generator)
    for ax, t in zip(axes[0], (int(t) for t in timesteps), strict=True):
        alpha_bar = schedule.alphas_cumprod[t].item()
        x0 = data.sample(n, generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = q_sample(x0, torch.full((n,), t, dtype=torch.long), noise, schedule)
        exact = data.posterior_mean(x_t, alpha_bar)
        x0_hat = denoise(model, x_t, t, schedule)[1] if model is not None else exact
        ax.scatter(cloud[:, 0].numpy(), cloud[:, 1].numpy(), s=2, color="lightgrey")
        ax.scatter(x_t[:, 0].numpy(), x_t[:, 1].numpy(), s=10, color="tab:blue", label="x_t")
        d = (x0_hat - x_t).numpy()
        ax.quiver(x_t[:, 0].numpy(), x_t[:, 1].numpy(), d[:, 0], d[:, 1], angles="xy", scale_units="xy",
                  scale=1, width=0.004, color="tab:blue", alpha=0.7)
        ax.scatter(exact[:, 0].numpy(), exact[:, 1].numpy(), s=14, marker="x", color="tab:red",
                   label="exact E[x_0 | x_t]")
        mean = data.mean().numpy()
        ax.scatter([mean[0]], [mean[1]], s=120, marker="*", color="black", label="data mean")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[],
               title=f"t = {t}, ᾱ = {alpha_bar:.2f}")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle("x_t → x̂_0 = (x_t + (1 - ᾱ_t) · score) / √ᾱ_t" + (" (learned)" if model is not None else " (exact)"))
    return fig


# ---------------------------------------------------------------------------
# Looking inside a network
# ---------------------------------------------------------------------------


def feature_maps(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                 layers: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Run ``model(x, t)`` once and capture the output of each named layer.

    Args:
        model: any network called as ``model(x, t)``.
        x: input batch ``[B, C, H, W]``; t: timesteps ``[B]``.
        layers: ``{name: submodule}`` to record, e.g. ``{"down 1": model.down[0]}``.

    Returns:
        ``{name: activation}``, each ``[B, C_layer, H_layer, W_layer]``, detached, on the CPU.
    """
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _in, out, name=name: captured.__setitem__(name, out.detach().cpu()))
        for name, module in layers.items()
    ]
    try:
        with torch.no_grad():
            model(x, t)
    finally:
        for h in hooks:
            h.remove()
    return {name: captured[name] for name in layers if name in captured}


def plot_feature_maps(maps: dict[str, torch.Tensor], channels: int = 6, size: float = 1.3) -> Figure:
    """One row per layer: the first ``channels`` feature maps of the first image, each min-max scaled."""
    fig, axes = plt.subplots(len(maps), channels, figsize=(size * channels, size * len(maps)), squeeze=False)
    for row, (name, act) in enumerate(maps.items()):
        for col in range(channels):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < act.shape[1]:
                m = act[0, col]
                ax.imshow(((m - m.min()) / (m.max() - m.min() + 1e-8)).numpy(), cmap="viridis")
            if col == 0:
                ax.set_ylabel(f"{name}\n{act.shape[2]}x{act.shape[3]}", fontsize=8)
    fig.tight_layout()
    return fig


def receptive_field(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                    pixel: tuple[int, int] | None = None) -> torch.Tensor:
    """Effective receptive field: |d output[pixel] / d input|, summed over channels (Luo et al. 2016).

    Args:
        model: a network called as ``model(x, t)`` returning an image shaped like ``x``.
        x: one input ``[1, C, H, W]``; t: ``[1]``.
        pixel: ``(row, col)`` of the output pixel; the centre by default.

    Returns:
        ``[H, W]`` float tensor, normalised to a maximum of 1: how much each input pixel
        influences that one output pixel.
    """
    x = x.detach().clone().requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        out = model(x, t)
        r, c = pixel if pixel is not None else (x.shape[2] // 2, x.shape[3] // 2)
        out[0, :, r, c].sum().backward()
    finally:
        model.train(was_training)
    grad = x.grad[0].abs().sum(0)
    return grad / (grad.max() + 1e-12)


# ---------------------------------------------------------------------------
# The reverse process: from noise to images
# ---------------------------------------------------------------------------


def _one_image(x: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` from ``[C, H, W]`` or a batch ``[b, C, H, W]`` (its first image)."""
    return x[0] if x.ndim == 4 else x


def _evenly(count: int, keep: int) -> list[int]:
    """``keep`` indices spread evenly over ``range(count)``, always with the first and the last."""
    if count <= keep:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, keep).round()})


def reverse_process_strip(
    xs: Sequence[torch.Tensor] | torch.Tensor,
    x0s: Sequence[torch.Tensor] | torch.Tensor,
    ts: Sequence[int],
    columns: int = 8,
    size: float = 1.3,
    title: str | None = None,
) -> Figure:
    """The reverse process of one image: ``x_t`` on top, the sampler's estimate x̂0 below, left to right.

    Args:
        xs: the samples the model saw, one per step: a list of ``[C, H, W]`` (or ``[b, C, H, W]``, of
            which the first image is drawn) or a tensor ``[K, C, H, W]``, in [-1, 1].
        x0s: the x0 estimates from them, in the same layout.
        ts: the timestep of each column (e.g. a :class:`~diffusion_course.sampling.Trajectory`'s
            ``ts``, with ``xs`` and ``x0s`` from it too).
        columns: at most this many steps are drawn, spread evenly, the first and the last always.
    """
    if not (len(xs) == len(x0s) == len(ts)) or len(ts) == 0:
        raise ValueError(f"xs, x0s and ts must have the same non-zero length, got {len(xs)}, {len(x0s)}, {len(ts)}")
    picked = _evenly(len(ts), columns)
    fig, axes = plt.subplots(2, len(picked), figsize=(size * len(picked), 2 * size + 0.4), squeeze=False)
    for col, k in enumerate(picked):
        for row, images in enumerate((xs, x0s)):
            picture = to_display(_one_image(images[k]))
            ax = axes[row, col]
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title(f"t={int(ts[k])}", fontsize=9)
    axes[0, 0].set_ylabel("x_t")
    axes[1, 0].set_ylabel("x̂0")
    fig.suptitle(title or "reverse process: x_t (top) and the predicted x̂0 (bottom)")
    fig.tight_layout()
    return fig


def _grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=1, pad_value=1.0)
    return to_display(grid)


def animate_samples(
    frames: Sequence[torch.Tensor] | torch.Tensor,
    ts: Sequence[int] | None = None,
    nrow: int | None = None,
    interval: int = 150,
    max_frames: int = 20,
    size: float = 2.5,
    dpi: int = 72,
    html: bool = True,
):
    """Animate a batch of images changing over the sampling steps (e.g. ``Trajectory.x0s`` or ``.xs``).

    Args:
        frames: one ``[B, C, H, W]`` tensor in [-1, 1] per step (a list, or a tensor ``[K, B, C, H, W]``);
            each frame is drawn as one grid.
        ts: the timestep of each frame, shown in the title.
        nrow: images per grid row (default sqrt(B)).
        interval: milliseconds per frame.
        max_frames: at most this many frames are kept, spread evenly (first and last always), so the
            embedded HTML stays small (JPEG frames of ``size`` inches at ``dpi``: up to ~20 KB each for
            pure noise, less for images: at most about 0.5 MB with the defaults).
        html: return an ``IPython.display.HTML`` (matplotlib's JavaScript player, nothing to install);
            ``False`` returns the ``matplotlib.animation.FuncAnimation`` itself.
    """
    from matplotlib import animation

    if len(frames) == 0:
        raise ValueError("frames is empty: record some steps first (e.g. with sampling.Trajectory)")
    if ts is not None and len(ts) != len(frames):
        raise ValueError(f"ts has {len(ts)} entries for {len(frames)} frames")
    picked = _evenly(len(frames), max_frames)
    first = frames[picked[0]]
    first = first.unsqueeze(0) if first.ndim == 3 else first
    nrow = nrow or max(1, math.ceil(math.sqrt(first.shape[0])))
    grids = [_grid(frames[k].unsqueeze(0) if frames[k].ndim == 3 else frames[k], nrow) for k in picked]
    height, width = grids[0].shape[:2]
    fig, ax = plt.subplots(figsize=(size, size * height / width + 0.3), dpi=dpi)
    ax.axis("off")
    shown = ax.imshow(grids[0], cmap="gray" if grids[0].ndim == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")

    def draw(n: int):
        shown.set_data(grids[n])
        ax.set_title(f"t={int(ts[picked[n]])}" if ts is not None else f"step {picked[n]}", fontsize=9)
        return (shown,)

    draw(0)
    fig.tight_layout()
    anim = animation.FuncAnimation(fig, draw, frames=len(grids), interval=interval, blit=False)
    if not html:
        return anim
    from IPython.display import HTML

    with plt.rc_context({"animation.frame_format": "jpeg", "savefig.dpi": dpi}):
        page = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return HTML(page)


# ---------------------------------------------------------------------------
# Text-to-image: where the image looks, per token
# ---------------------------------------------------------------------------


def show_token_attention(image: torch.Tensor, maps: torch.Tensor, words: Sequence[str], *,
                         size: float = 1.6, padding: bool = True) -> Figure:
    """The image, then one panel per token: how much the pixels attend to that token.

    Args:
        image: ``[C, H, W]`` (or ``[1, C, H, W]``) in [-1, 1], the generated image.
        maps: ``[L, H, W]`` cross-attention maps of this image, e.g. one row of
            :func:`diffusion_course.text_model.token_attention_maps` (for each pixel they sum to 1
            over the L tokens).
        words: the token strings of the caption in order (``[BOS]`` first); positions after them
            are padding.
        padding: add one panel with the attention that went to all padding positions together
            (the empty slots act as an "attend to nothing" sink).

    All panels share one colour scale (0 to the largest weight shown), so a token that draws
    little attention looks faint; each title gives the token and its mean share of attention.
    """
    maps = maps.detach().float().cpu()
    if maps.ndim != 3:
        raise ValueError(f"maps must be [L, H, W] (one image's token maps), got shape {tuple(maps.shape)}")
    words = list(words)
    if not 0 < len(words) <= maps.shape[0]:
        raise ValueError(f"got {len(words)} words for {maps.shape[0]} token maps; give the caption's tokens")
    panels = [(w, maps[i]) for i, w in enumerate(words)]
    if padding and len(words) < maps.shape[0]:
        panels.append((f"padding x{maps.shape[0] - len(words)}", maps[len(words):].sum(0)))
    top = max(float(m.max()) for _, m in panels) or 1.0
    picture = to_display(_one_image(image))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(size * (len(panels) + 1), size + 0.4), squeeze=False)
    axes = axes[0]
    axes[0].imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
    axes[0].set_title("image", fontsize=8)
    grey = picture if picture.ndim == 2 else picture.mean(axis=2)
    for ax, (word, m) in zip(axes[1:], panels, strict=True):
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, alpha=0.35)
        ax.imshow(m.numpy(), cmap="inferno", vmin=0, vmax=top, alpha=0.75)
        ax.set_title(f"{word}\n{float(m.mean()):.0%}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Samplers compared
# ---------------------------------------------------------------------------


def plot_quality_vs_steps(rows: Sequence, reference: str | None = None) -> Figure:
    """FID against model calls (left) and against wall-clock seconds (right), one line per sampler.

    Args:
        rows: :class:`~diffusion_course.sampler_comparison.SamplerRow` objects (or anything with
            ``sampler``, ``steps``, ``seconds`` and ``fid``), e.g. a benchmark table.
        reference: a title note, e.g. where the numbers come from.

    Returns:
        A figure with two axes; each sampler is one line (label: the sampler's name) with a point per row.
    """
    fig, (ax_steps, ax_time) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in dict.fromkeys(r.sampler for r in rows):
        mine = sorted((r for r in rows if r.sampler == name), key=lambda r: r.steps)
        ax_steps.plot([r.steps for r in mine], [r.fid for r in mine], "o-", label=name)
        ax_time.plot([r.seconds for r in mine], [r.fid for r in mine], "o-", label=name)
        for r in mine:
            ax_time.annotate(str(r.steps), (r.seconds, r.fid), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax_steps.set(xscale="log", xlabel="model calls (steps)", ylabel="FID (course features)", title="quality vs steps")
    ax_time.set(xscale="log", xlabel="seconds for the whole set", title="quality vs time (labels: steps)")
    for ax in (ax_steps, ax_time):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    if reference:
        fig.suptitle(reference, fontsize=9)
    fig.tight_layout()
    return fig
