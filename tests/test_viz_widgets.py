"""Pictures and the noising slider: what they draw, driven without a kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from diffusion_course import mixtures, toy2d, viz
from diffusion_course.diffusion import q_sample
from diffusion_course.losses import min_snr_weights
from diffusion_course.schedules import get_schedule
from diffusion_course.widgets import comparison_frame, noising_frame, noising_slider


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


def _x_t_picture(image, schedule, t, noise):
    return viz.to_display(q_sample(image[None], torch.tensor([t]), noise[None], schedule))[0]


def test_comparison_frame_shows_each_schedule_at_the_same_t(image):
    lin, cos = get_schedule("linear", 1000), get_schedule("cosine", 1000)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    fig = comparison_frame(image, [lin, cos], 300, noise)
    assert len(fig.axes) == 6
    pictures, hists, ab_axis, snr_axis = fig.axes[:2], fig.axes[2:4], fig.axes[4], fig.axes[5]
    for ax, s in zip(pictures, (lin, cos), strict=True):
        assert np.allclose(ax.images[0].get_array(), _x_t_picture(image, s, 300, noise), atol=1e-6)
        assert s.name in ax.get_title() and f"{s.alphas_cumprod[300].item():.3f}" in ax.get_title()
    for ax, s in zip(hists, (lin, cos), strict=True):
        assert len(ax.patches) == 35  # one bar per bin: the pixels of x_t
        assert f"SNR = {s.snr(300).item():.3g}" in ax.get_xlabel()
    markers_ab, markers_snr = ab_axis.get_lines()[-3:-1], snr_axis.get_lines()[-4:-2]
    for marker, s in zip(markers_ab, (lin, cos), strict=True):
        assert marker.get_xdata()[0] == 300 and marker.get_ydata()[0] == pytest.approx(s.alphas_cumprod[300].item())
    for marker, s in zip(markers_snr, (lin, cos), strict=True):
        assert marker.get_ydata()[0] == pytest.approx(s.log_snr(300).item())
    assert "t = 300 of 1000" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="same number of steps"):
        comparison_frame(image, [lin, get_schedule("cosine", 500)], 3, noise)


def test_noising_slider_selector_switches_views_and_redraws(image, monkeypatch):
    shown = []
    monkeypatch.setattr("diffusion_course.widgets.display", shown.append)
    w = noising_slider(image, seed=2)  # linear, cosine and sigmoid with T = 1000
    slider, selector = w.children[0], w.children[1]
    assert type(slider).__name__ == "IntSlider" and (slider.min, slider.max) == (0, 999)
    assert list(selector.options) == ["linear vs cosine", "linear", "cosine", "sigmoid"]
    assert selector.value == "linear vs cosine" and shown == [w.result]
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(2))
    lin, cos = get_schedule("linear", 1000), get_schedule("cosine", 1000)

    slider.value = 600  # side by side: both schedules at the new t
    side = w.result
    assert shown[-1] is side and len(side.axes) == 6
    assert np.allclose(side.axes[0].images[0].get_array(), _x_t_picture(image, lin, 600, noise), atol=1e-6)
    assert np.allclose(side.axes[1].images[0].get_array(), _x_t_picture(image, cos, 600, noise), atol=1e-6)

    selector.value = "cosine"  # one schedule alone, at the same t
    alone = w.result
    assert shown[-1] is alone and len(alone.axes) == 2 and "cosine" in alone.axes[0].get_title()
    assert np.allclose(alone.axes[0].images[0].get_array(), _x_t_picture(image, cos, 600, noise), atol=1e-6)
    slider.value = 50
    assert "t = 50" in w.result.axes[0].get_title() and shown[-1] is w.result
    selector.value = "sigmoid"
    assert "sigmoid" in w.result.axes[0].get_title()


def test_noising_slider_schedule_arguments(image):
    assert len(noising_slider(image, "cosine", timesteps=50).children) == 2  # slider + output: no selector
    w = noising_slider(image, [get_schedule("cosine", 20), "linear"], timesteps=20)
    assert list(w.children[1].options) == ["cosine vs linear", "cosine", "linear"]
    with pytest.raises(ValueError, match="same number of steps"):
        noising_slider(image, [get_schedule("cosine", 20), "linear"])
    with pytest.raises(ValueError, match="different names"):
        noising_slider(image, ["linear", "linear"])


def test_plot_snr_weighting_draws_the_package_weights():
    fig = viz.plot_snr_weighting(["linear", "cosine"], gamma=5.0, timesteps=200)
    snr_axis, weight_axis = fig.axes
    cos = get_schedule("cosine", 200)
    assert np.allclose(snr_axis.get_lines()[1].get_ydata(), cos.log_snr().numpy())
    assert snr_axis.get_lines()[2].get_ydata()[0] == pytest.approx(np.log(5.0))
    expected = min_snr_weights(torch.arange(200), cos, "eps", 5.0).numpy()
    assert np.allclose(weight_axis.get_lines()[1].get_ydata(), expected)


def test_plot_reverse_step_draws_the_exact_posterior():
    prior = mixtures.GaussianMixture([-1.0, 1.0], [0.5, 0.5], [0.5, 0.5])
    fig = viz.plot_reverse_step(prior, 0.3, betas=(0.01, 0.4))
    assert [ax.get_title() for ax in fig.axes[1:]] == ["β = 0.01", "β = 0.4"]
    for ax, beta in zip(fig.axes[1:], (0.01, 0.4), strict=True):
        true_line = ax.get_lines()[0]
        xs = torch.as_tensor(true_line.get_xdata(), dtype=torch.float64)
        expected = prior.posterior(torch.tensor([0.3]), 1 - beta).log_prob(xs[:, None]).exp().numpy()
        assert np.allclose(true_line.get_ydata(), expected)
    with pytest.raises(ValueError, match="one-dimensional"):
        viz.plot_reverse_step(mixtures.ring(), 0.0)


def test_plot_score_field_arrows_are_the_scaled_scores():
    data, s = mixtures.ring(4, 0.8, 0.1), get_schedule("cosine", 1000)
    fig = viz.plot_score_field(data, s, timesteps=(100, 600), grid=5, lim=1.0, shrink=0.5)
    assert len(fig.axes) == 2  # no model: the exact row only
    quiver = fig.axes[1].collections[0]
    points = torch.as_tensor(quiver.get_offsets(), dtype=torch.float64)
    a = s.alphas_cumprod[600].item()
    expected = 0.5 * (1 - a) * data.noised(a).score(points)
    assert np.allclose(np.stack([quiver.U, quiver.V], 1), expected.numpy(), atol=1e-9)
    with_model = viz.plot_score_field(data, s, timesteps=(100, 600), model=toy2d.ToyDenoiser(), grid=5)
    assert len(with_model.axes) == 4
    untrained = with_model.axes[0].collections[0]  # an untrained model predicts eps = 0: no arrows
    assert np.allclose(untrained.U, 0) and np.allclose(untrained.V, 0)


def test_plot_tweedie_arrows_end_at_the_posterior_mean():
    data, s = mixtures.ring(4, 0.8, 0.1), get_schedule("linear", 1000)
    fig = viz.plot_tweedie(data, s, timesteps=(300,), n=12, generator=torch.Generator().manual_seed(0))
    ax = fig.axes[0]
    arrows = ax.collections[2]
    starts = np.asarray(arrows.get_offsets())
    ends = starts + np.stack([arrows.U, arrows.V], 1)
    exact = np.asarray(ax.collections[3].get_offsets())  # the red crosses
    assert np.allclose(ends, exact, atol=1e-5)
    a = s.alphas_cumprod[300].item()
    assert np.allclose(exact, data.posterior_mean(torch.as_tensor(starts), a).numpy(), atol=1e-5)


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
