"""Speed measurement helpers shared by the benchmark scripts: images/s, FLOPs, MFU, GPU peaks."""

from __future__ import annotations

import pytest

from diffusion_course.benchmarking import (
    model_flops_utilisation,
    peak_tflops,
    training_speed,
)
from diffusion_course.unet import UNet, forward_flops

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_training_speed_measures_the_presets_flops_and_a_positive_rate():
    result = training_speed("tiny", "cpu", batch=2, steps=1, warmup_steps=1)
    assert result.images_per_second > 0 and result.warmup_seconds > 0
    assert result.flops_per_image == forward_flops(UNet.from_preset("tiny"))
    assert (result.preset, result.batch, result.steps) == ("tiny", 2, 1)
    assert result.train_tflops == pytest.approx(3 * result.flops_per_image * result.images_per_second / 1e12)


def test_training_speed_runs_through_torch_compile_graph_capture():
    # the eager backend: dynamo traces the U-Net (graph breaks would still run) without
    # inductor's C++ compile, which takes minutes on a small CPU
    result = training_speed("tiny", "cpu", batch=2, steps=1, warmup_steps=1, precision="fp32",
                            channels_last=False, compile_model=True, compile_backend="eager")
    assert result.images_per_second > 0


def test_training_speed_rejects_bad_settings():
    with pytest.raises(ValueError, match="precision"):
        training_speed("tiny", "cpu", precision="fp16")
    with pytest.raises(ValueError, match="positive"):
        training_speed("tiny", "cpu", batch=0)


def test_mfu_is_three_forward_passes_over_the_peak():
    # 1 GFLOP forward per image at 1000 img/s = 3 TFLOP/s of training, 1 % of a 300 TFLOP/s card
    assert model_flops_utilisation(1e9, 1000.0, 300.0) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("Some Future GPU", None),
    ],
)
def test_peak_tflops_matches_variants_before_their_family(name, peak):
    assert peak_tflops(name) == peak

