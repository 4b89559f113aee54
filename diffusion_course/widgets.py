"""Interactive widgets for the notebooks (ipywidgets).

Each widget is a thin shell around a plain function that does the work and returns a
matplotlib ``Figure``. The plain function is what the tests call; the widget only wires
controls to it, so a widget that works in a test works in JupyterLab.

The noising slider is the course's picture of the forward process: drag t and watch one
image, with one fixed noise sample, dissolve. With several schedules it gets a selector:
each schedule alone, or the first two side by side at the same t (:func:`comparison_frame`),
with their alpha-bar, SNR and the histogram of the pixels of x_t.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from matplotlib.figure import Figure

from .diffusion import q_sample
from .schedules import NoiseSchedule, get_schedule
from .viz import to_display

DEFAULT_SCHEDULES = ("linear", "cosine", "sigmoid")
"""What :func:`noising_slider` offers when it is given no schedule."""


def _x_t(image: torch.Tensor, schedule: NoiseSchedule, t: int, noise: torch.Tensor) -> torch.Tensor:
    return q_sample(image.unsqueeze(0), torch.tensor([t]), noise.unsqueeze(0), schedule)[0]


def _show(ax, picture: np.ndarray) -> None:
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)


def noising_frame(
    image: torch.Tensor, schedule: NoiseSchedule, t: int, noise: torch.Tensor
) -> Figure:
    """Draw x_t for one image next to the alpha-bar curve with a marker at t.

    Args:
        image: one clean image ``[C, H, W]`` in [-1, 1].
        schedule: the noise schedule.
        t: the timestep, an integer in ``[0, T-1]``.
        noise: the fixed noise ``[C, H, W]`` (kept fixed so moving t shows one path).

    Returns:
        A figure with two axes: ``axes[0]`` shows x_t (its image array is x_t mapped to
        [0, 1]), ``axes[1]`` the alpha-bar curve with a red marker at ``(t, alpha_bar_t)``.
    """
    t = int(t)
    xt = _x_t(image, schedule, t, noise)
    alpha_bar = schedule.alphas_cumprod[t].item()
    fig, (ax_img, ax_curve) = plt.subplots(1, 2, figsize=(7, 3), width_ratios=[1, 1.6])
    _show(ax_img, to_display(xt))
    ax_img.set_title(f"x_t at t = {t} ({schedule.name})")
    ax_img.axis("off")
    ax_curve.plot(schedule.alphas_cumprod.numpy(), label="ᾱ_t (signal)")
    ax_curve.plot((1 - schedule.alphas_cumprod).numpy(), label="1 - ᾱ_t (noise)", alpha=0.6)
    ax_curve.plot([t], [alpha_bar], "o", color="red")
    ax_curve.set(xlabel="t", title=f"ᾱ_{t} = {alpha_bar:.3f}, SNR = {schedule.snr(t).item():.3g}")
    ax_curve.legend(fontsize=8, loc="center right")
    ax_curve.grid(alpha=0.3)
    fig.tight_layout()
    # close it for pyplot so that only the widget displays it (no duplicate inline copy)
    plt.close(fig)
    return fig


def comparison_frame(
    image: torch.Tensor, schedules: Sequence[NoiseSchedule], t: int, noise: torch.Tensor
) -> Figure:
    """One image with the same noise at the same t under several schedules, side by side.

    Args:
        image: one clean image ``[C, H, W]`` in [-1, 1].
        schedules: the schedules to compare (two is the usual case), all with the same T.
        t: the timestep, an integer in ``[0, T-1]``.
        noise: the fixed noise ``[C, H, W]``, the same for every schedule.

    Returns:
        A figure whose axes are, for ``n`` schedules: ``axes[:n]`` x_t under each schedule
        (titled with its name and alpha-bar_t), ``axes[n:2n]`` the histogram of the pixels of
        each x_t against N(0, 1) (labelled with SNR and log SNR), ``axes[2n]`` the alpha-bar
        curves and ``axes[2n + 1]`` the log-SNR curves, each with one marker per schedule at t.
    """
    t = int(t)
    n = len(schedules)
    _same_length(schedules)
    fig = plt.figure(figsize=(3.0 * n + 4.2, 5.6))
    grid = fig.add_gridspec(2, n + 1, height_ratios=[1.6, 1], width_ratios=[1] * n + [1.5])
    images = [fig.add_subplot(grid[0, j]) for j in range(n)]
    hists = [fig.add_subplot(grid[1, j]) for j in range(n)]
    ax_ab, ax_snr = fig.add_subplot(grid[0, n]), fig.add_subplot(grid[1, n])
    bins = np.linspace(-3.5, 3.5, 36)
    normal = np.exp(-(bins**2) / 2) / math.sqrt(2 * math.pi)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    top = 0.0
    for j, s in enumerate(schedules):
        colour = colours[j % len(colours)]
        xt = _x_t(image, s, t, noise)
        alpha_bar = s.alphas_cumprod[t].item()
        snr = s.snr(t).item()
        _show(images[j], to_display(xt))
        images[j].set_title(f"{s.name}: ᾱ_t = {alpha_bar:.3f}", color=colour)
        images[j].axis("off")
        counts, _, _ = hists[j].hist(xt.flatten().numpy(), bins=bins, density=True, color=colour, alpha=0.7)
        top = max(top, float(counts.max()), float(normal.max()))
        hists[j].plot(bins, normal, "k--", lw=1)
        hists[j].set_xlabel(f"SNR = {snr:.3g}, log SNR = {math.log(snr):+.2f}", fontsize=9)
        hists[j].set_yticks([])
        steps = np.arange(s.timesteps)
        ax_ab.plot(steps, s.alphas_cumprod.numpy(), color=colour, label=s.name)
        ax_snr.plot(steps, s.log_snr().numpy(), color=colour, label=s.name)
    for j, s in enumerate(schedules):  # markers last, so each curve axis ends with them
        colour = colours[j % len(colours)]
        ax_ab.plot([t], [s.alphas_cumprod[t].item()], "o", color=colour)
        ax_snr.plot([t], [s.log_snr(t).item()], "o", color=colour)
        hists[j].set_ylim(0, 1.1 * top)
    hists[0].set_ylabel("pixels of x_t\n(-- N(0, 1))", fontsize=8)
    ax_ab.set(title="ᾱ_t: signal kept", xlabel="t")
    ax_snr.set(title="log SNR(t)", xlabel="t")
    ax_snr.axhline(0.0, color="grey", lw=0.8, ls=":")
    for ax in (ax_ab, ax_snr):
        ax.axvline(t, color="grey", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"t = {t} of {schedules[0].timesteps}: the same image and the same noise")
    fig.tight_layout()
    plt.close(fig)
    return fig


def noising_slider(
    image: torch.Tensor,
    schedule: NoiseSchedule | str | Sequence[NoiseSchedule | str] | None = None,
    seed: int = 0,
    step: int = 1,
    timesteps: int = 1000,
) -> widgets.interactive:
    """A slider over t that shows one image being noised, with a schedule selector.

    Args:
        image: one clean image ``[C, H, W]`` (or ``[1, C, H, W]``) in [-1, 1].
        schedule: one :class:`NoiseSchedule` (or name): a slider for that schedule alone, as
            :func:`noising_frame` draws it. Several (or ``None`` for linear, cosine and sigmoid
            with ``timesteps`` steps): a second control picks what to show, the first two side
            by side (:func:`comparison_frame`, the default view) or each one alone.
        seed: seeds the fixed noise, so the same slider position always shows the same x_t.
        step: slider step size.
        timesteps: T for schedules given by name.

    Returns:
        An ``ipywidgets.interactive``: display it in a notebook; ``.children[0]`` is the t
        slider (an ``IntSlider``), ``.children[1]`` the view selector when there is one, and
        ``.result`` is the last figure drawn, which is also displayed in the widget's output
        area each time a control changes.
    """
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3:
        raise ValueError(f"noising_slider expects one image [C, H, W], got {tuple(image.shape)}")
    image = image.detach().float().cpu()
    single = isinstance(schedule, (NoiseSchedule, str))
    items = [schedule] if single else list(DEFAULT_SCHEDULES if schedule is None else schedule)
    if not items:
        raise ValueError("noising_slider needs at least one schedule")
    schedules = [get_schedule(s, timesteps) if isinstance(s, str) else s for s in items]
    _same_length(schedules)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    slider = widgets.IntSlider(
        value=0, min=0, max=schedules[0].timesteps - 1, step=step, description="t",
        continuous_update=False,
    )
    by_name = {s.name: s for s in schedules}
    if len(by_name) != len(schedules):
        raise ValueError("give schedules with different names (the selector shows the names)")

    def draw(fig: Figure) -> Figure:
        # widgets.interactive (unlike interact) does not display what the callback returns
        display(fig)
        return fig

    if len(schedules) == 1:
        return widgets.interactive(lambda t: draw(noising_frame(image, schedules[0], t, noise)), t=slider)

    pair = schedules[:2]
    side_by_side = f"{pair[0].name} vs {pair[1].name}"
    selector = widgets.ToggleButtons(
        options=[side_by_side, *by_name], value=side_by_side, description="show",
        style={"button_width": "auto"},
    )

    def show(t: int, view: str) -> Figure:
        if view == side_by_side:
            return draw(comparison_frame(image, pair, t, noise))
        return draw(noising_frame(image, by_name[view], t, noise))

    return widgets.interactive(show, t=slider, view=selector)


def _same_length(schedules: Sequence[NoiseSchedule]) -> None:
    lengths = sorted({s.timesteps for s in schedules})
    if len(lengths) > 1:
        raise ValueError(f"schedules to compare must have the same number of steps, got {lengths}")


# ---------------------------------------------------------------------------
# The step scrubber: a recorded sampling run, step by step
# ---------------------------------------------------------------------------


def trajectory_frame(trajectory, k: int, image: int = 0) -> Figure:
    """Step ``k`` of a recorded sampling run: what the model saw and what it predicted, for one image.

    Args:
        trajectory: a :class:`~diffusion_course.sampling.Trajectory` filled by ``sample(..., callback=...)``
            (its ``ts``, ``xs`` and ``x0s``; ``xs[k]`` and ``x0s[k]`` are ``[b, C, H, W]``).
        k: the recorded step, ``0 <= k < len(trajectory)`` (0: the first, noisiest step).
        image: which of the recorded images to show.

    Returns:
        A figure with three axes: ``axes[0]`` x_t at step k, ``axes[1]`` the x0 estimate x̂0 made from it
        (image arrays mapped to [0, 1]), ``axes[2]`` the recorded timesteps against the step number with
        a red marker at step k.
    """
    k = int(k)
    if not 0 <= k < len(trajectory):
        raise ValueError(f"step k must be in [0, {len(trajectory) - 1}], got {k}")
    t = trajectory.ts[k]
    fig, (ax_x, ax_x0, ax_t) = plt.subplots(1, 3, figsize=(8, 2.8), width_ratios=[1, 1, 1.4])
    panels = ((ax_x, trajectory.xs, f"x_t at t = {t}"), (ax_x0, trajectory.x0s, "x̂0 predicted from it"))
    for ax, images, title in panels:
        _show(ax, to_display(images[k][image]))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    ax_t.plot(range(len(trajectory)), trajectory.ts, ".-", lw=0.8, ms=3)
    ax_t.plot([k], [t], "o", color="red")
    ax_t.set(xlabel="recorded step", ylabel="t", title=f"step {k + 1} of {len(trajectory)} recorded")
    ax_t.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def step_scrubber(trajectory, image: int = 0) -> widgets.interactive:
    """A slider over the recorded steps of a sampling run that shows x_t and x̂0 at each.

    Args:
        trajectory: a filled :class:`~diffusion_course.sampling.Trajectory` (at least one step).
        image: which recorded image to show.

    Returns:
        An ``ipywidgets.interactive``: ``.children[0]`` is the step slider (an ``IntSlider`` from 0 to
        ``len(trajectory) - 1``), ``.result`` the last figure drawn by :func:`trajectory_frame`, which
        is also displayed each time the slider moves.
    """
    if len(trajectory) == 0:
        raise ValueError("the trajectory is empty: pass it to sample(..., callback=trajectory) first")
    count = trajectory.xs[0].shape[0]
    if not 0 <= image < count:
        raise ValueError(f"image must be in [0, {count - 1}] (the trajectory kept {count} images), got {image}")
    slider = widgets.IntSlider(value=0, min=0, max=len(trajectory) - 1, step=1, description="step",
                               continuous_update=False)

    def show(step: int) -> Figure:
        fig = trajectory_frame(trajectory, step, image)
        display(fig)  # widgets.interactive does not display what the callback returns
        return fig

    return widgets.interactive(show, step=slider)
