"""Tests for diffusion_course.unet: every block, every preset, conditioning, and the sharp edges.

diffusers is the numeric reference: its ResnetBlock2D, Attention and UNet2DModel are
loaded with the same weights and must give the same numbers.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_script

from diffusion_course.unet import (
    PRESETS,
    AttentionBlock,
    CrossAttentionBlock,
    Downsample,
    ResBlock,
    TimeEmbedding,
    UNet,
    UNetConfig,
    Upsample,
    conv_receptive_field,
    count_parameters,
    forward_flops,
    get_config,
    timestep_embedding,
)

REPO = Path(__file__).resolve().parents[1]


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Overwrite every parameter with small random values (undoing the zero inits), in place.

    GroupNorm scales become 1 + noise so that activations keep a sensible size.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                base = 1.0 if isinstance(m, torch.nn.GroupNorm) and name == "weight" else 0.0
                p.copy_(base + std * torch.randn(p.shape, generator=gen))
    return module


def tiny(**overrides) -> UNet:
    torch.manual_seed(0)
    return UNet.from_preset("tiny", **overrides)


# ---------------------------------------------------------------------------------------
# timestep embedding
# ---------------------------------------------------------------------------------------


def test_timestep_embedding_is_sin_then_cos_with_ddpm_frequencies():
    t = torch.tensor([0, 1, 10, 999])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (4, 8) and emb.dtype == torch.float32
    freqs = 10000.0 ** (-torch.arange(4) / 3)  # 1 ... 1/10000, DDPM's (half - 1) spacing
    args = t[:, None].float() * freqs
    torch.testing.assert_close(emb, torch.cat([torch.sin(args), torch.cos(args)], dim=1))
    # t = 0: all sines are 0, all cosines are 1
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert emb.abs().max() <= 1.0


@pytest.mark.parametrize("dim,max_period", [(32, 10000.0), (128, 10000.0), (64, 1000.0)])
def test_timestep_embedding_matches_diffusers_ddpm_convention(dim, max_period):
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 3, 250, 999])
    ref = get_timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=1, max_period=max_period)
    torch.testing.assert_close(timestep_embedding(t, dim, max_period), ref)


def test_timestep_embedding_accepts_float_and_scalar_t():
    torch.testing.assert_close(timestep_embedding(torch.tensor([5.0, 7.5]), 16)[0],
                               timestep_embedding(torch.tensor([5]), 16)[0])
    assert timestep_embedding(torch.tensor(3), 16).shape == (1, 16)


@pytest.mark.parametrize("dim", [0, 7, 2.0])
def test_timestep_embedding_rejects_bad_dim(dim):
    with pytest.raises(ValueError, match="dim must be an even integer"):
        timestep_embedding(torch.tensor([1]), dim)


def test_timestep_embedding_rejects_2d_t():
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        timestep_embedding(torch.zeros(2, 3), 8)


def test_time_embedding_mlp_shapes_and_dtype():
    torch.manual_seed(0)
    te = TimeEmbedding(16, 64)
    out = te(torch.tensor([0, 500]))
    assert out.shape == (2, 64)
    assert not torch.allclose(out[0], out[1])  # different timesteps, different embeddings
    te64 = te.double()
    assert te64(torch.tensor([1])).dtype == torch.float64  # sinusoid is cast to the weights' dtype


# ---------------------------------------------------------------------------------------
# blocks vs diffusers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cin,cout", [(32, 32), (32, 64)])
@pytest.mark.parametrize("scale_shift", [False, True])
def test_resblock_matches_diffusers_resnetblock2d(cin, cout, scale_shift):
    from diffusers.models.resnet import ResnetBlock2D

    ours = randomize(ResBlock(cin, cout, time_dim=48, scale_shift=scale_shift, norm_groups=8))
    ref = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=48, groups=8, eps=1e-5,
                        time_embedding_norm="scale_shift" if scale_shift else "default")
    names = {"time_proj": "time_emb_proj", "skip": "conv_shortcut"}
    ref.load_state_dict({f"{names.get(k.split('.')[0], k.split('.')[0])}.{k.split('.')[1]}": v
                         for k, v in ours.state_dict().items()})
    x, temb = torch.randn(2, cin, 8, 8), torch.randn(2, 48)
    torch.testing.assert_close(ours(x, temb), ref(x, temb), rtol=1e-4, atol=1e-5)
    assert isinstance(ours.skip, torch.nn.Conv2d if cin != cout else torch.nn.Identity)
    assert ours.time_proj.out_features == cout * (2 if scale_shift else 1)


def test_resblock_starts_as_its_skip_path_and_depends_on_time():
    torch.manual_seed(0)
    block = ResBlock(16, 32, time_dim=8, norm_groups=8)
    x = torch.randn(3, 16, 8, 8)
    torch.testing.assert_close(block(x, torch.randn(3, 8)), block.skip(x))  # conv2 starts at zero
    randomize(block)
    a, b = block(x, torch.zeros(3, 8)), block(x, torch.ones(3, 8))
    assert a.shape == (3, 32, 8, 8) and not torch.allclose(a, b)


def test_resblock_dropout_only_in_training():
    torch.manual_seed(0)
    block = randomize(ResBlock(8, 8, time_dim=4, dropout=0.5, norm_groups=4))
    x, temb = torch.randn(2, 8, 8, 8), torch.randn(2, 4)
    block.train()
    assert not torch.allclose(block(x, temb), block(x, temb))
    block.eval()
    torch.testing.assert_close(block(x, temb), block(x, temb))


def _load_attention(ours: torch.nn.Module, ref: torch.nn.Module, cross: bool) -> None:
    sd = ours.state_dict()
    c = ours.proj.weight.shape[0]
    if cross:
        q, (k, v) = sd["q.weight"], sd["kv.weight"].split(c)
        qb, (kb, vb) = sd["q.bias"], sd["kv.bias"].split(c)
    else:
        q, k, v = sd["qkv.weight"].split(c)
        qb, kb, vb = sd["qkv.bias"].split(c)
    ref.load_state_dict({
        "group_norm.weight": sd["norm.weight"], "group_norm.bias": sd["norm.bias"],
        "to_q.weight": q, "to_q.bias": qb, "to_k.weight": k, "to_k.bias": kb, "to_v.weight": v, "to_v.bias": vb,
        "to_out.0.weight": sd["proj.weight"], "to_out.0.bias": sd["proj.bias"],
    })


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_block_matches_diffusers_attention(heads):
    from diffusers.models.attention_processor import Attention

    ours = randomize(AttentionBlock(32, num_heads=heads, norm_groups=8))
    ref = Attention(32, heads=heads, dim_head=32 // heads, norm_num_groups=8, eps=1e-5, bias=True,
                    residual_connection=True, _from_deprecated_attn_block=True)
    _load_attention(ours, ref, cross=False)
    x = torch.randn(2, 32, 6, 5)  # non-square on purpose
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("heads", [1, 2])
def test_cross_attention_block_matches_diffusers_attention(heads):
    from diffusers.models.attention_processor import Attention

    ours = randomize(CrossAttentionBlock(32, context_dim=12, num_heads=heads, norm_groups=8))
    ref = Attention(32, cross_attention_dim=12, heads=heads, dim_head=32 // heads, norm_num_groups=8, eps=1e-5,
                    bias=True, residual_connection=True)
    _load_attention(ours, ref, cross=True)
    x, context = torch.randn(2, 32, 4, 4), torch.randn(2, 7, 12)
    torch.testing.assert_close(ours(x, context), ref(x, encoder_hidden_states=context), rtol=1e-4, atol=1e-5)


def test_attention_blocks_start_as_identity_and_check_heads():
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(AttentionBlock(16, 2, 8)(x), x)
    torch.testing.assert_close(CrossAttentionBlock(16, 5, 2, 8)(x, torch.randn(2, 3, 5)), x)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        AttentionBlock(16, num_heads=3, norm_groups=8)


def test_attention_mixes_all_pixels_and_cross_attention_reads_context():
    torch.manual_seed(0)
    attn = randomize(AttentionBlock(8, 2, 4))
    x = torch.randn(1, 8, 4, 4)
    y = x.clone()
    y[..., 0, 0] += 1.0  # change one corner pixel
    far = (attn(x) - attn(y))[..., 3, 3]  # the opposite corner sees it through attention
    assert far.abs().max() > 1e-6
    cross = randomize(CrossAttentionBlock(8, 6, 2, 4))
    assert not torch.allclose(cross(x, torch.randn(1, 3, 6)), cross(x, torch.randn(1, 3, 6)))


def test_downsample_and_upsample_shapes():
    x = torch.randn(2, 8, 14, 14)
    assert Downsample(8)(x).shape == (2, 8, 7, 7)
    assert Upsample(8)(x).shape == (2, 8, 28, 28)
    assert Upsample(8, out_channels=4)(x).shape == (2, 4, 28, 28)
    # nearest-neighbour upsampling: with an identity-like conv the 2x2 blocks repeat each pixel
    up = Upsample(1)
    with torch.no_grad():
        up.conv.weight.zero_()
        up.conv.weight[0, 0, 1, 1] = 1.0
        up.conv.bias.zero_()
    small = torch.arange(4.0).view(1, 1, 2, 2)
    assert torch.equal(up(small), small.repeat_interleave(2, 2).repeat_interleave(2, 3))


# ---------------------------------------------------------------------------------------
# the whole U-Net vs diffusers' UNet2DModel
# ---------------------------------------------------------------------------------------


def diffusers_state_for(ours: UNet, ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map a diffusers UNet2DModel's weights onto the course U-Net's parameter names."""
    sd, out, mine = ref.state_dict(), {}, ours.state_dict()

    def copy_(dst: str, src: str) -> None:
        for kind in ("weight", "bias"):
            if f"{src}.{kind}" in sd:
                out[f"{dst}.{kind}"] = sd[f"{src}.{kind}"]

    def res(dst: str, src: str) -> None:
        for a, b in [("norm1", "norm1"), ("conv1", "conv1"), ("time_proj", "time_emb_proj"), ("norm2", "norm2"),
                     ("conv2", "conv2"), ("skip", "conv_shortcut")]:
            copy_(f"{dst}.{a}", f"{src}.{b}")

    def attn(dst: str, src: str) -> None:
        if f"{dst}.qkv.weight" not in mine:
            return
        copy_(f"{dst}.norm", f"{src}.group_norm")
        for kind in ("weight", "bias"):
            out[f"{dst}.qkv.{kind}"] = torch.cat([sd[f"{src}.to_{n}.{kind}"] for n in "qkv"])
        copy_(f"{dst}.proj", f"{src}.to_out.0")

    c = ours.config
    levels = len(c.channel_mults)
    copy_("conv_in", "conv_in")
    copy_("time_embed.linear_1", "time_embedding.linear_1")
    copy_("time_embed.linear_2", "time_embedding.linear_2")
    copy_("class_embed", "class_embedding")
    i = 0
    for level in range(levels):
        for j in range(c.num_res_blocks):
            res(f"down.{i}.res", f"down_blocks.{level}.resnets.{j}")
            attn(f"down.{i}.attn", f"down_blocks.{level}.attentions.{j}")
            i += 1
        if level < levels - 1:
            copy_(f"down.{i}.conv", f"down_blocks.{level}.downsamplers.0.conv")
            i += 1
    res("mid.0.res", "mid_block.resnets.0")
    attn("mid.0.attn", "mid_block.attentions.0")
    res("mid.1.res", "mid_block.resnets.1")
    i = 0
    for k in range(levels):
        for j in range(c.num_res_blocks + 1):
            res(f"up.{i}.res", f"up_blocks.{k}.resnets.{j}")
            attn(f"up.{i}.attn", f"up_blocks.{k}.attentions.{j}")
            i += 1
        if k < levels - 1:
            copy_(f"up.{i}.conv", f"up_blocks.{k}.upsamplers.0.conv")
            i += 1
    copy_("norm_out", "conv_norm_out")
    copy_("conv_out", "conv_out")
    return out


def diffusers_twin(c: UNetConfig) -> torch.nn.Module:
    """diffusers' UNet2DModel with the architecture of UNetConfig ``c`` (DDPM conventions)."""
    from diffusers import UNet2DModel

    res = c.level_resolutions
    attn = [r in c.attention_resolutions for r in res]
    return UNet2DModel(
        sample_size=c.image_size, in_channels=c.in_channels, out_channels=c.out_channels,
        block_out_channels=tuple(c.base_channels * m for m in c.channel_mults), layers_per_block=c.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1, norm_num_groups=c.norm_groups,
        norm_eps=1e-5, dropout=c.dropout, num_class_embeds=c.num_classes + 1 if c.num_classes else None,
        resnet_time_scale_shift="scale_shift" if c.scale_shift else "default",
    )


def test_ddpm_cifar10_preset_has_the_papers_35_7m_parameters():
    model = UNet.from_preset("ddpm-cifar10")
    n = count_parameters(model)
    assert abs(n - 35.7e6) <= 0.01 * 35.7e6, n
    assert n == count_parameters(diffusers_twin(model.config)) == 35_746_307


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(num_classes=4),  # (not scale_shift: diffusers then drops the middle attention's GroupNorm)
    dict(num_res_blocks=2, attention_resolutions=(8, 16), channel_mults=(1, 2)),
])
def test_unet_matches_diffusers_unet2dmodel(overrides):
    cfg = UNetConfig(image_size=16, in_channels=3, out_channels=3, base_channels=16, channel_mults=(1, 2, 2),
                     num_res_blocks=1, attention_resolutions=(8,), dropout=0.0, num_heads=1, norm_groups=8)
    from dataclasses import replace

    cfg = replace(cfg, **overrides)
    torch.manual_seed(0)
    ref = diffusers_twin(cfg).eval()
    ours = UNet(cfg).eval()
    ours.load_state_dict(diffusers_state_for(ours, ref))  # strict: every parameter mapped
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 870])
    labels = torch.tensor([0, 4]) if cfg.num_classes else None
    expected = ref(x, t, class_labels=labels).sample
    assert expected.abs().mean() > 1e-3  # diffusers does not zero its output conv: a real comparison
    torch.testing.assert_close(ours(x, t, class_labels=labels), expected, rtol=1e-4, atol=1e-5)


def test_ddpm_cifar10_matches_diffusers_numerically():
    torch.manual_seed(0)
    ours = UNet.from_preset("ddpm-cifar10").eval()
    ref = diffusers_twin(ours.config).eval()
    ours.load_state_dict(diffusers_state_for(ours, ref))
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), ref(x, t).sample, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# configs and presets
# ---------------------------------------------------------------------------------------


def test_presets_and_get_config():
    assert set(PRESETS) == {"tiny", "small", "ddpm-cifar10"}
    assert UNetConfig() == PRESETS["ddpm-cifar10"]  # the defaults are DDPM's network
    cfg = get_config("small", image_size=28, in_channels=1, out_channels=1)
    assert (cfg.image_size, cfg.in_channels, cfg.base_channels) == (28, 1, PRESETS["small"].base_channels)
    assert PRESETS["small"].image_size == 32  # the preset itself is untouched
    assert "UNetConfig(image_size=32" in str(PRESETS["small"])  # printable in one line
    with pytest.raises(FrozenInstanceError):
        cfg.image_size = 64
    assert UNetConfig(channel_mults=[1, 2], attention_resolutions=[16]).channel_mults == (1, 2)


def test_get_config_rejects_unknown_names_and_fields():
    with pytest.raises(ValueError, match="unknown U-Net preset 'huge'; choose one of: tiny, small, ddpm-cifar10"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown UNetConfig field.*base_channel.*valid fields"):
        get_config("tiny", base_channel=8)


@pytest.mark.parametrize("overrides,message", [
    (dict(image_size=30), r"image_size 30 is not divisible by 8 .*e\.g\. 24 or 32"),
    (dict(image_size=28), r"image_size 28 is not divisible by 8"),
    (dict(base_channels=100), r"not divisible by norm_groups=32"),
    (dict(num_heads=3), r"not divisible by num_heads=3"),
    (dict(attention_resolutions=(14,)), r"attention_resolutions \(14,\) match no level .* \(32, 16, 8, 4\)"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(channel_mults=()), r"channel_mults must be a non-empty tuple"),
    (dict(num_res_blocks=0), r"num_res_blocks must be a positive integer"),
    (dict(num_classes=0), r"num_classes must be None or a positive integer"),
])
def test_config_validation_messages(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config("ddpm-cifar10", **overrides)


def test_unet_needs_a_config():
    with pytest.raises(ValueError, match="UNet needs a UNetConfig"):
        UNet("small")


def test_parameter_counts_of_presets():
    counts = {name: count_parameters(UNet(cfg)) for name, cfg in PRESETS.items()}
    assert counts["tiny"] < 500_000
    assert 1_000_000 <= counts["small"] <= 4_000_000
    assert counts["ddpm-cifar10"] == 35_746_307
    frozen = UNet.from_preset("tiny")
    frozen.time_embed.requires_grad_(False)
    assert count_parameters(frozen, trainable_only=True) == counts["tiny"] - count_parameters(frozen.time_embed)


@pytest.mark.parametrize("name,size,channels", [
    ("tiny", 32, 3), ("tiny", 28, 1), ("small", 32, 3), ("small", 28, 1), ("ddpm-cifar10", 32, 3),
])
def test_every_preset_keeps_the_input_shape(name, size, channels):
    torch.manual_seed(0)
    model = UNet.from_preset(name, image_size=size, in_channels=channels, out_channels=channels)
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.count_nonzero(out) == 0  # zero-initialised output convolution
    assert model.config.image_size == size


def test_small_model_built_for_32_runs_on_28():
    model = UNet.from_preset("small")  # fully convolutional: any size divisible by 4
    assert model(torch.randn(1, 3, 28, 28), torch.tensor([10])).shape == (1, 3, 28, 28)


def test_out_channels_can_differ_from_in_channels():
    model = tiny(out_channels=6)  # e.g. predicting eps and a variance (Improved DDPM)
    assert model(torch.randn(1, 3, 32, 32), torch.tensor([1])).shape == (1, 6, 32, 32)


def test_attention_placement_follows_attention_resolutions():
    def attention_count(model: UNet) -> int:
        return sum(isinstance(m, AttentionBlock) for m in model.modules())

    assert attention_count(tiny()) == 1  # () -> only the middle block
    # tiny at 32: levels 32, 16, 8; 1 block down + 2 up at 16x16, plus the middle one
    assert attention_count(tiny(attention_resolutions=(16,))) == 1 + 1 + 2
    ddpm = UNet.from_preset("ddpm-cifar10")
    assert attention_count(ddpm) == 2 + 3 + 1  # DDPM: attention at 16x16 and in the middle


def test_lean_upsample_narrows_the_upsampling_convolutions():
    wide, lean = tiny(channel_mults=(1, 2, 4)), tiny(channel_mults=(1, 2, 4), lean_upsample=True)
    ups = [m.conv.out_channels for m in lean.modules() if isinstance(m, Upsample)]
    assert ups == [32, 16] and [m.conv.out_channels for m in wide.modules() if isinstance(m, Upsample)] == [64, 32]
    assert count_parameters(lean) < count_parameters(wide)
    assert forward_flops(lean) < forward_flops(wide)
    assert lean(torch.randn(1, 3, 32, 32), torch.tensor([1])).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("x,t,message", [
    (torch.randn(2, 1, 32, 32), torch.tensor([1, 2]), r"x has 1 channels but this U-Net expects in_channels=3"),
    (torch.randn(2, 3, 30, 32), torch.tensor([1, 2]), r"image size 30x32 is not divisible by 4"),
    (torch.randn(3, 32, 32), torch.tensor([1, 2]), r"x must be a float tensor \[B, C, H, W\]"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.long), torch.tensor([1, 2]), r"x must be a float tensor"),
    (torch.randn(2, 3, 32, 32), torch.tensor([1, 2, 3]), r"t must have shape \[B\] = \[2\].*got \(3,\)"),
    (torch.randn(2, 3, 32, 32), torch.tensor([[1], [2]]), r"t must have shape \[B\] = \[2\].*got \(2, 1\)"),
    (torch.randn(2, 3, 32, 32), torch.tensor([True, False]), r"t must hold integer or float timesteps"),
])
def test_bad_inputs_fail_with_clear_messages(x, t, message):
    with pytest.raises(ValueError, match=message):
        tiny()(x, t)


def test_t_may_be_a_number_or_float_tensor():
    model = randomize(tiny())
    x = torch.randn(2, 3, 32, 32)
    ref = model(x, torch.tensor([7, 7]))
    torch.testing.assert_close(model(x, 7), ref)
    torch.testing.assert_close(model(x, torch.tensor(7)), ref)
    torch.testing.assert_close(model(x, torch.tensor([7.0, 7.0])), ref)


def test_conditioning_inputs_without_the_matching_config_are_rejected():
    model, x, t = tiny(), torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="no class embedding; build it with num_classes"):
        model(x, t, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no cross-attention; build it with context_dim"):
        model(x, t, context=torch.randn(2, 4, 8))
    cond = tiny(num_classes=10, context_dim=8)
    with pytest.raises(ValueError, match=r"class_labels must lie in 0\.\.10"):
        cond(x, t, class_labels=torch.tensor([0, 11]))
    with pytest.raises(ValueError, match=r"class_labels must be an integer tensor of shape \[2\]"):
        cond(x, t, class_labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"context must have shape \[B=2, L, context_dim=8\], got \(2, 4, 5\)"):
        cond(x, t, context=torch.randn(2, 4, 5))


# ---------------------------------------------------------------------------------------
# conditioning
# ---------------------------------------------------------------------------------------


def test_class_labels_change_the_output_and_none_means_the_null_label():
    model = randomize(tiny(num_classes=10)).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([100, 100])
    a = model(x, t, class_labels=torch.tensor([3, 3]))
    b = model(x, t, class_labels=torch.tensor([4, 4]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(model(x, t), model(x, t, class_labels=torch.tensor([10, 10])))
    assert model.class_embed.num_embeddings == 11  # 10 classes + the "no class" label


def test_cross_attention_reads_the_context_and_is_skipped_without_it():
    model = randomize(tiny(context_dim=8)).eval()
    assert sum(isinstance(m, CrossAttentionBlock) for m in model.modules()) == 1  # one per self-attention
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 900])
    a = model(x, t, context=torch.randn(2, 5, 8))
    b = model(x, t, context=torch.randn(2, 3, 8))  # any context length works
    assert a.shape == b.shape == x.shape and not torch.allclose(a, b)
    # without context the cross-attention layers are skipped: same as an unconditional twin
    plain = tiny()
    plain.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(model(x, t), plain.eval()(x, t))


# ---------------------------------------------------------------------------------------
# training behaviour
# ---------------------------------------------------------------------------------------


def test_gradients_reach_every_parameter():
    """Zero-initialised layers block gradients at first; the test follows them step by step.

    The output conv and the last layer of every residual branch start at zero (as in DDPM),
    so: step 0 -- every parameter gets a gradient tensor, but only conv_out's is non-zero;
    after one update the identity paths carry gradient (skip convs, resampling, the zero
    layers themselves); after two, every parameter has a non-zero gradient.
    """
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", image_size=16, attention_resolutions=(8,), num_classes=3, context_dim=8,
                             scale_shift=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([1, 10, 100, 999])
    labels, context = torch.tensor([0, 1, 2, 3]), torch.randn(4, 6, 8)

    def grads() -> dict[str, torch.Tensor | None]:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x, t, labels, context), torch.randn_like(x)).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    g = grads()
    assert all(v is not None for v in g.values()), [n for n, v in g.items() if v is None]
    assert {n for n, v in g.items() if v.abs().sum() > 0} == {"conv_out.weight", "conv_out.bias"}
    opt.step()
    g = grads()
    live = {n for n, v in g.items() if v.abs().sum() > 0}
    assert {"conv_in.weight", "down.0.res.conv2.weight", "mid.0.attn.proj.weight", "mid.0.cross.proj.weight"} <= live
    assert "time_embed.linear_1.weight" not in live  # still behind the zero conv2 layers
    opt.step()
    g = grads()
    dead = [n for n, v in g.items() if not v.abs().sum() > 0]
    assert not dead, dead
    assert all(torch.isfinite(v).all() for v in g.values())


def test_same_seed_same_model_and_output():
    def run() -> torch.Tensor:
        torch.manual_seed(123)
        model = UNet.from_preset("tiny", dropout=0.3)
        randomize(model, seed=5)
        model.train()
        torch.manual_seed(7)  # dropout masks
        return model(torch.ones(2, 3, 32, 32), torch.tensor([3, 4]))

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)
    torch.manual_seed(1)
    a = UNet.from_preset("tiny")
    torch.manual_seed(1)
    b = UNet.from_preset("tiny")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_dropout_is_random_in_train_mode_and_off_in_eval_mode():
    model = randomize(tiny(dropout=0.2))
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    model.train()
    assert not torch.allclose(model(x, t), model(x, t))
    model.eval()
    torch.testing.assert_close(model(x, t), model(x, t), rtol=0, atol=0)
    no_dropout = randomize(tiny(dropout=0.0)).train()
    torch.testing.assert_close(no_dropout(x, t), no_dropout(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_grad_checkpoint_gives_the_same_outputs_and_gradients(dropout):
    base = randomize(tiny(dropout=dropout, num_classes=3, context_dim=8, attention_resolutions=(16,)))
    ckpt = UNet(get_config("tiny", dropout=dropout, num_classes=3, context_dim=8, attention_resolutions=(16,),
                           grad_checkpoint=True))
    ckpt.load_state_dict(base.state_dict())
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 800])
    labels, context = torch.tensor([1, 3]), torch.randn(2, 4, 8)
    outs, grads = [], []
    for model in (base, ckpt):
        model.train()
        torch.manual_seed(0)
        out = model(x, t, labels, context)
        out.square().mean().backward()
        outs.append(out)
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_grad_checkpoint_really_recomputes():
    model = UNet(get_config("tiny", grad_checkpoint=True)).train()
    calls = []
    model.mid[0].res.conv1.register_forward_hook(lambda *_: calls.append(1))
    model(torch.randn(1, 3, 32, 32), torch.tensor([1])).sum().backward()
    assert len(calls) == 2  # once forward, once again during backward
    calls.clear()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32), torch.tensor([1]))
    assert len(calls) == 1  # no checkpointing without gradients


def test_channels_last_gives_the_same_results():
    model = randomize(tiny(attention_resolutions=(16,), context_dim=8))
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x, t, ctx = torch.randn(2, 3, 32, 32), torch.tensor([3, 600]), torch.randn(2, 5, 8)
    out = model(x, t, context=ctx)
    out_cl = twin(x.contiguous(memory_format=torch.channels_last), t, context=ctx)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous()
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    out_cl.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        # summation order differs between memory formats: compare whole tensors, relatively
        assert (q.grad - p.grad).norm() <= 1e-4 * p.grad.norm() + 1e-6, name


def test_tiny_learns_to_denoise_a_fixed_batch():
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", image_size=16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.randn(8, 3, 16, 16)
    target = -x  # a simple function the network must learn
    t = torch.arange(8) * 100
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(x, t), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(1.0, rel=0.2)  # predicts 0 at first
    assert losses[-1] < 0.3 * losses[0]


def test_bfloat16_autocast_runs():
    model = randomize(tiny())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 32, 32), torch.tensor([1]))
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------------------------------
# measuring: parameters, FLOPs, import time
# ---------------------------------------------------------------------------------------


def test_forward_flops_counts_convolutions_and_attention():
    plain, attn = tiny(), tiny(attention_resolutions=(8,))
    f_plain, f_attn = forward_flops(plain), forward_flops(attn)
    # tiny at 32x32: level 8x8 has width 32 and gets 3 attention layers (1 down, 2 up);
    # each: qkv 2*N*C*3C + proj 2*N*C*C + scores and mixing 2 * 2*N*N*C, N = 64 pixels
    n, c = 64, 32
    per_layer = 2 * n * c * 3 * c + 2 * n * c * c + 2 * (2 * n * n * c)
    assert f_attn - f_plain == 3 * per_layer
    assert forward_flops(plain, batch=3) == 3 * f_plain
    assert forward_flops(plain, image_size=16) < f_plain
    # DDPM's CIFAR-10 network: about 6.2 G multiply-adds per image
    assert forward_flops(UNet.from_preset("ddpm-cifar10")) / 2e9 == pytest.approx(6.2, rel=0.02)


def test_example_inputs_fit_the_model_and_follow_its_conditioning():
    from diffusion_course.unet import example_inputs

    plain = example_inputs(tiny(), batch=2, image_size=16)
    assert plain["x"].shape == (2, 3, 16, 16) and plain["t"].shape == (2,) and plain["t"].dtype == torch.long
    assert plain["class_labels"] is None and plain["context"] is None
    model = tiny(num_classes=10, context_dim=12, attention_resolutions=(16,))
    inputs = example_inputs(model, batch=3, context_length=5)
    assert inputs["x"].shape == (3, 3, 32, 32)
    assert inputs["class_labels"].shape == (3,) and inputs["context"].shape == (3, 5, 12)
    with torch.no_grad():
        assert model(**inputs).shape == (3, 3, 32, 32)


def test_forward_flops_conditioned_model():
    model = tiny(num_classes=5, context_dim=8)
    assert forward_flops(model) > forward_flops(tiny())


def test_conv_receptive_field_matches_the_pixels_that_can_reach_the_centre():
    assert conv_receptive_field([]) == 1
    assert conv_receptive_field([(3, 1)] * 6) == 13
    assert conv_receptive_field([(3, 2), (3, 2), (3, 1)]) == 1 + 2 + 4 + 8  # the last layer spans 3 cells of 4 px
    # the formula against the gradient: which input pixels change the centre output pixel
    for spec in ([(3, 1), (3, 2), (3, 1)], [(3, 2), (5, 1), (3, 2), (3, 1)], [(3, 1), (1, 1), (3, 1)]):
        layers = [torch.nn.Conv2d(1, 1, k, stride=s, padding=k // 2) for k, s in spec]
        torch.manual_seed(0)
        for layer in layers:
            torch.nn.init.uniform_(layer.weight, 0.5, 1.0)  # positive weights: no accidental cancellation
        x = torch.zeros(1, 1, 64, 64, requires_grad=True)
        out = torch.nn.Sequential(*layers)(x)
        out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
        rows = x.grad[0, 0].abs().sum(1).nonzero()
        assert rows.max() - rows.min() + 1 == conv_receptive_field(layers) == conv_receptive_field(spec)
    dilated = torch.nn.Conv2d(1, 1, 3, dilation=2)
    assert conv_receptive_field([dilated, (3, 1)]) == 7
    with pytest.raises(ValueError, match="square kernels"):
        conv_receptive_field([torch.nn.Conv2d(1, 1, (3, 1))])
    with pytest.raises(ValueError, match="pair of positive integers"):
        conv_receptive_field([(3, 0)])


def test_importing_unet_is_light():
    code = ("import sys, diffusion_course.unet; "
            "heavy = [m for m in ('diffusers', 'torch.utils.flop_counter', 'torchvision') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------------------
# the benchmark script keeps working
# ---------------------------------------------------------------------------------------


def _benchmark_module():
    return load_script("unet_throughput", "unet_throughput")


def test_benchmark_runs_in_a_tiny_setting(capsys):
    bench = _benchmark_module()
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--steps", "1", "--batch-size", "2", "--sizes", "8", "--presets", "tiny",
                           "--trainer-steps", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "-- tiny at 8x8x3 --" in out and "-- small at 8x8x3 --" in out  # the default model first
    assert "course tiny" in out and "course small" in out and out.count("speed-up course/diffusers") == 2
    assert "goal >= 5x for the default model 'tiny'): tiny 8x8: " in out
    assert "the trainer keeps" in out and "bare model:" in out
    assert "Where the parameters sit" in out and "8/16/48 channels, lean" in out
    assert "skipped: no CUDA GPU" in out or "MFU" in out


def test_benchmark_rejects_bad_flags():
    bench = _benchmark_module()
    for bad in (["--presets", "huge"], ["--models", "ddpm-cifar10"], ["--trainer-steps", "-1"]):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(bad)
        assert exc.value.code == 2, bad


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_benchmark_diffusers_model_matches_its_preset_within_ten_percent(preset):
    from diffusion_course.benchmarking import diffusers_opponent

    for size, channels in [(28, 1), (32, 3)]:
        ours = count_parameters(UNet.from_preset(preset, image_size=size, in_channels=channels,
                                                 out_channels=channels))
        theirs = count_parameters(diffusers_opponent(size, channels, preset))
        assert math.isclose(theirs, ours, rel_tol=0.10), (ours, theirs)


def test_benchmark_has_no_opponent_for_an_unknown_preset():
    from diffusion_course.benchmarking import diffusers_opponent

    with pytest.raises(ValueError, match="no diffusers opponent for preset 'huge'"):
        diffusers_opponent(28, 1, "huge")
