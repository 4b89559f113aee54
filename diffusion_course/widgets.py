"""Interactive widgets for the notebooks (ipywidgets).

Each widget is a thin shell around a plain function that does the work and returns a
matplotlib ``Figure``. The plain function is what the tests call; the widget only wires
a slider to it, so a widget that works in a test works in JupyterLab.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display
from matplotlib.figure import Figure

from .diffusion import q_sample
from .schedules import NoiseSchedule
from .viz import to_display


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
    xt = q_sample(image.unsqueeze(0), torch.tensor([t]), noise.unsqueeze(0), schedule)[0]
    alpha_bar = schedule.alphas_cumprod[t].item()
    fig, (ax_img, ax_curve) = plt.subplots(1, 2, figsize=(7, 3), width_ratios=[1, 1.6])
    picture = to_display(xt)
    ax_img.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
    ax_img.set_title(f"x_t at t = {t}")
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


def noising_slider(
    image: torch.Tensor,
    schedule: NoiseSchedule,
    seed: int = 0,
    step: int = 1,
) -> widgets.interactive:
    """A slider over t that shows the noised image and where t sits on the alpha-bar curve.

    Args:
        image: one clean image ``[C, H, W]`` (or ``[1, C, H, W]``) in [-1, 1].
        schedule: the noise schedule.
        seed: seeds the fixed noise, so the same slider position always shows the same x_t.
        step: slider step size.

    Returns:
        An ``ipywidgets.interactive``: display it in a notebook; ``.children[0]`` is the
        slider, and ``.result`` is the last figure drawn, which is also displayed in the
        widget's output area each time the slider moves.
    """
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3:
        raise ValueError(f"noising_slider expects one image [C, H, W], got {tuple(image.shape)}")
    image = image.detach().float().cpu()
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    slider = widgets.IntSlider(
        value=0, min=0, max=schedule.timesteps - 1, step=step, description="t",
        continuous_update=False,
    )

    def show(t: int) -> Figure:
        fig = noising_frame(image, schedule, t, noise)
        # widgets.interactive (unlike interact) does not display what the callback returns
        display(fig)
        return fig

    return widgets.interactive(show, t=slider)
