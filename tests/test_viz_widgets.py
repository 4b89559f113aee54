"""Pictures and the noising slider: what they draw, driven without a kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from diffusion_course import viz
from diffusion_course.diffusion import q_sample
from diffusion_course.schedules import get_schedule
from diffusion_course.widgets import noising_frame, noising_slider


@pytest.fixture
def image():
    return torch.linspace(-1, 1, 28 * 28).reshape(1, 28, 28)


def test_to_display_maps_range_and_layout():
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 2, 2)
    out = viz.to_display(x)
    assert out.shape == (1, 2, 2)
    assert np.allclose(out.ravel(), [0.0, 0.5, 1.0, 1.0])  # clipped above 1
    rgb = viz.to_display(torch.zeros(3, 4, 5))
    assert rgb.shape == (4, 5, 3)
    with pytest.raises(ValueError, match=r"\[B, 1\|3, H, W\]"):
        viz.to_display(torch.zeros(2, 4, 4, 4))


def test_show_images_and_labels(image):
    fig = viz.show_images(torch.stack([image] * 5), nrow=3, title="t", labels=list("abcde"))
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:5]] == list("abcde")


def test_forward_process_strip_uses_same_noise(image):
    s = get_schedule("linear", 1000)
    fig = viz.forward_process_strip(image, s, (0, 500, 999), generator=torch.Generator().manual_seed(0))
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["t=0", "t=500", "t=999"]
    noise = torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    expected = viz.to_display(q_sample(image[None], torch.tensor([500]), noise, s))[0]
    assert np.allclose(fig.axes[1].images[0].get_array(), expected, atol=1e-6)


def test_plot_schedules_draws_each_curve():
    fig = viz.plot_schedules(["linear", get_schedule("cosine", 500)], timesteps=100)
    ab_axis, snr_axis = fig.axes
    assert [line.get_label() for line in ab_axis.get_lines()] == ["linear", "cosine"]
    assert len(ab_axis.get_lines()[0].get_xdata()) == 100 and len(ab_axis.get_lines()[1].get_xdata()) == 500
    assert np.allclose(snr_axis.get_lines()[1].get_ydata(), get_schedule("cosine", 500).log_snr().numpy())


def test_noise_histogram(image):
    fig = viz.noise_histogram(image, get_schedule("cosine", 1000), (0, 999))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["t=0", "t=999", "N(0, 1)"]


def test_noising_frame_shows_x_t_and_marker(image):
    s = get_schedule("cosine", 1000)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    fig = noising_frame(image, s, 300, noise)
    img_ax, curve_ax = fig.axes
    expected = viz.to_display(q_sample(image[None], torch.tensor([300]), noise[None], s))[0]
    assert np.allclose(img_ax.images[0].get_array(), expected, atol=1e-6)
    marker = curve_ax.get_lines()[-1]
    assert marker.get_xdata()[0] == 300
    assert marker.get_ydata()[0] == pytest.approx(s.alphas_cumprod[300].item())
    assert "t = 300" in img_ax.get_title()


def test_noising_slider_drives_callback(image, monkeypatch):
    shown = []
    monkeypatch.setattr("diffusion_course.widgets.display", shown.append)
    s = get_schedule("linear", 1000)
    w = noising_slider(image, s, seed=1)
    assert shown == [w.result], "the first frame must be displayed, not only returned"
    slider = w.children[0]
    assert (slider.min, slider.max, slider.value) == (0, 999, 0)
    first = w.result
    assert isinstance(first, Figure) and "t = 0" in first.axes[0].get_title()
    slider.value = 750
    moved = w.result
    assert moved is not first and "t = 750" in moved.axes[0].get_title()
    assert shown[-1] is moved, "moving the slider must display the new frame"
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    expected = viz.to_display(q_sample(image[None], torch.tensor([750]), noise[None], s))[0]
    assert np.allclose(moved.axes[0].images[0].get_array(), expected, atol=1e-6)
    # the same position draws the same picture: the noise is fixed per slider
    slider.value = 10
    slider.value = 750
    assert np.allclose(w.result.axes[0].images[0].get_array(), expected, atol=1e-6)


def test_noising_slider_accepts_batch_of_one_and_rejects_batches(image):
    s = get_schedule("linear", 10)
    assert noising_slider(image[None], s).children[0].max == 9
    with pytest.raises(ValueError, match=r"one image \[C, H, W\]"):
        noising_slider(torch.zeros(2, 1, 4, 4), s)


class _Shift(torch.nn.Module):
    """A 'network' whose output pixel (r, c) depends only on input pixels (r, c) and (r, c+1)."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Identity()

    def forward(self, x, t):
        return self.inner(x) + torch.roll(x, -1, dims=-1)


def test_feature_maps_capture_named_layers():
    from diffusion_course.unet import UNet

    model = UNet.from_preset("tiny", image_size=8, in_channels=1, out_channels=1, channel_mults=(1, 2))
    maps = viz.feature_maps(model, torch.randn(2, 1, 8, 8), torch.tensor([1, 2]),
                            {"down": model.down[0], "mid": model.mid[0]})
    assert maps["down"].shape == (2, 16, 8, 8) and maps["mid"].shape == (2, 32, 4, 4)
    assert not any(m._forward_hooks for m in model.modules()), "hooks must be removed"
    fig = viz.plot_feature_maps(maps, channels=3)
    assert len(fig.axes) == 6 and "4x4" in fig.axes[3].get_ylabel()


def test_receptive_field_finds_exactly_the_influencing_pixels():
    field = viz.receptive_field(_Shift(), torch.randn(1, 1, 5, 5), torch.tensor([0]))
    assert field.shape == (5, 5) and field.max() == 1.0
    assert set(map(tuple, field.nonzero().tolist())) == {(2, 2), (2, 3)}
