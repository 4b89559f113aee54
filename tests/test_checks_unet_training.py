"""Phase 2 and 3 checks: they pass the references and name typical mistakes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion_course import checks, unet
from diffusion_course.checks import training as ref_training
from diffusion_course.diffusion import q_sample

# ---------------------------------------------------------------------------------------
# Phase 2: the U-Net checks. Answers are written out here (an answer that calls the package's
# own function or method is rejected as delegation), and mistakes derive from them.
# ---------------------------------------------------------------------------------------


def embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = max_period ** (-torch.arange(half, dtype=torch.float64) / (half - 1))
    args = t.double()[:, None] * freqs
    return torch.cat([args.sin(), args.cos()], 1)


class MyResBlock(torch.nn.Module):
    """The notebook's layers (names as in the package) with a forward written out."""

    def __init__(self, cin, cout, time_dim, dropout=0.0, norm_groups=8):
        super().__init__()
        self.norm1 = torch.nn.GroupNorm(norm_groups, cin)
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = torch.nn.Linear(time_dim, cout)
        self.norm2 = torch.nn.GroupNorm(norm_groups, cout)
        self.dropout = torch.nn.Dropout(dropout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = torch.nn.Conv2d(cin, cout, 1) if cin != cout else torch.nn.Identity()

    def first_half(self, x):
        return self.conv1(F.silu(self.norm1(x)))

    def time(self, temb):
        return self.time_proj(F.silu(temb))[:, :, None, None]

    def second_half(self, h):
        return self.conv2(self.dropout(F.silu(h)))

    def forward(self, x, temb):
        return self.skip(x) + self.second_half(self.norm2(self.first_half(x) + self.time(temb)))


class MyAttention(torch.nn.Module):
    def __init__(self, channels, num_heads=1, norm_groups=8):
        super().__init__()
        self.num_heads = num_heads
        self.norm = torch.nn.GroupNorm(norm_groups, channels)
        self.qkv = torch.nn.Linear(channels, 3 * channels)
        self.proj = torch.nn.Linear(channels, channels)

    def attend(self, x, heads, scale=None):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x).flatten(2).transpose(1, 2)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, h * w, heads, c // heads).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).reshape(b, h * w, c)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x):
        return x + self.attend(x, self.num_heads)


class MyUNet(unet.UNet):
    def down_path(self, x, temb):
        skips = [self.conv_in(x)]
        for layer in self.down:
            skips.append(layer(skips[-1], temb) if isinstance(layer, unet.UNetBlock) else layer(skips[-1]))
        return skips

    def up_path(self, h, skips, temb):
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], 1), temb) if isinstance(layer, unet.UNetBlock) else layer(h)
        return h

    def forward(self, x, t):
        temb = self.time_embed(t)
        skips = self.down_path(x, temb)
        h = skips[-1]
        for block in self.mid:
            h = block(h, temb)
        return self.conv_out(F.silu(self.norm_out(self.up_path(h, skips, temb))))


def test_references_pass():
    assert checks.check_train_step(ref_training.reference_train_step)
    assert checks.check_ema_update(ref_training.reference_ema_update)
    assert checks.check_accumulated_step(ref_training.reference_accumulated_step)


def test_unet_checks_pass_answers_written_out():
    assert checks.check_timestep_embedding(embedding)
    assert checks.check_res_block(MyResBlock)
    assert checks.check_attention_block(MyAttention)
    assert checks.check_unet_forward(MyUNet)


def test_unet_checks_reject_the_package_own_code():
    class InheritsForward(unet.ResBlock):
        def __init__(self, cin, cout, time_dim, dropout=0.0):
            super().__init__(cin, cout, time_dim, dropout, False, 8)

    class InheritsAttention(unet.AttentionBlock):
        def __init__(self, channels, num_heads=1):
            super().__init__(channels, num_heads, 8)

    for check, answer, name in (
        (checks.check_timestep_embedding, unet.timestep_embedding, "`timestep_embedding`"),
        (checks.check_res_block, InheritsForward, "`ResBlock.forward`"),
        (checks.check_attention_block, InheritsAttention, "`AttentionBlock.forward`"),
        (checks.check_unet_forward, unet.UNet, "`UNet.forward`"),
    ):
        result = check(answer)
        assert not result and f"the package's own {name}" in result.problems[0], result.problems


def test_timestep_embedding_mistakes():
    def cos_first(t, dim, max_period=10000.0):
        e = embedding(t, dim, max_period)
        return torch.cat([e[:, dim // 2:], e[:, : dim // 2]], 1)

    def ignores_period(t, dim, max_period=10000.0):
        return embedding(t, dim)

    def divides_by_half(t, dim, max_period=10000.0):
        half = dim // 2
        f = torch.exp(-torch.log(torch.tensor(max_period)) * torch.arange(half) / half)
        a = t.float()[:, None] * f
        return torch.cat([a.sin(), a.cos()], 1)

    def t_not_used(t, dim, max_period=10000.0):
        return embedding(torch.ones_like(t), dim, max_period)

    def integers(t, dim, max_period=10000.0):
        return embedding(t, dim, max_period).round().long()

    for fn, message in ((cos_first, "sines first"), (ignores_period, "max_period argument"),
                        (divides_by_half, "dim/2 - 1"), (t_not_used, "what multiplies t"),
                        (integers, "floating-point")):
        result = checks.check_timestep_embedding(fn)
        assert not result and message in result.problems[0], result.problems


def test_res_block_mistakes():
    class NoTime(MyResBlock):
        def forward(self, x, temb):
            return self.skip(x) + self.second_half(self.norm2(self.first_half(x)))

    class TimeAfterConv2(MyResBlock):
        def forward(self, x, temb):
            return self.skip(x) + self.second_half(self.norm2(self.first_half(x))) + self.time(temb)

    class TimeAfterNorm(MyResBlock):
        def forward(self, x, temb):
            return self.skip(x) + self.second_half(self.norm2(self.first_half(x)) + self.time(temb))

    class NoSiluOnTemb(MyResBlock):
        def forward(self, x, temb):
            e = self.time_proj(temb)[:, :, None, None]
            return self.skip(x) + self.second_half(self.norm2(self.first_half(x) + e))

    class NoSkip(MyResBlock):
        def forward(self, x, temb):
            return super().forward(x, temb) - self.skip(x)

    class SkipNotProjected(MyResBlock):
        def forward(self, x, temb):
            return super().forward(x, temb) - self.skip(x) + x

    class ChangedInit(torch.nn.Module):
        def __init__(self, cin, cout, time_dim, dropout=0.0):
            super().__init__()
            self.conv = torch.nn.Conv2d(cin, cout, 3, padding=1)

    for cls, message in ((NoTime, "time embedding has no effect"), (TimeAfterConv2, "after the second convolution"),
                         (TimeAfterNorm, "added after norm2"), (NoSiluOnTemb, "apply SiLU to temb"),
                         (NoSkip, "residual connection"), (SkipNotProjected, "self.skip(x), not x itself"),
                         (ChangedInit, "keep the given __init__")):
        result = checks.check_res_block(cls)
        assert not result and message in result.problems[-1], result.problems


def test_attention_mistakes():
    class OneHead(MyAttention):
        def forward(self, x):
            return x + self.attend(x, 1)

    class Tokens(MyAttention):
        def forward(self, x):
            return super().forward(x).flatten(2).transpose(1, 2)

    class Unscaled(MyAttention):
        def forward(self, x):
            return x + self.attend(x, self.num_heads, scale=1.0)

    class ScaledByAllChannels(MyAttention):
        def forward(self, x):
            return x + self.attend(x, self.num_heads, scale=x.shape[1] ** -0.5)

    class NoResidual(MyAttention):
        def forward(self, x):
            return self.attend(x, self.num_heads)

    for cls, message in ((OneHead, "right for one head"), (Tokens, "back into [B, C, H, W]"),
                         (Unscaled, "not scaled"), (ScaledByAllChannels, "divided by sqrt(C)"),
                         (NoResidual, "residual connection is missing")):
        result = checks.check_attention_block(cls)
        assert not result and message in result.problems[0], result.problems


def test_unet_forward_mistakes():
    class FirstInFirstOut(MyUNet):
        def up_path(self, h, skips, temb):
            return super().up_path(h, skips[::-1], temb)

    class SkipFirst(MyUNet):
        def up_path(self, h, skips, temb):
            for layer in self.up:
                h = layer(torch.cat([skips.pop(), h], 1), temb) if isinstance(layer, unet.UNetBlock) else layer(h)
            return h

    class NoDownsamplePush(MyUNet):
        def down_path(self, x, temb):
            h = self.conv_in(x)
            skips = [h]
            for layer in self.down:
                if isinstance(layer, unet.UNetBlock):
                    h = layer(h, temb)
                    skips.append(h)
                else:
                    h = layer(h)
            return skips

    class NoHead(MyUNet):
        def forward(self, x, t):
            temb = self.time_embed(t)
            skips = self.down_path(x, temb)
            return self.up_path(self.mid[1](self.mid[0](skips[-1], temb), temb), skips, temb)

    class NoMiddle(MyUNet):
        def forward(self, x, t):
            temb = self.time_embed(t)
            skips = self.down_path(x, temb)
            return self.conv_out(F.silu(self.norm_out(self.up_path(skips[-1], skips, temb))))

    class ChangedInit(MyUNet):
        def __init__(self, config):
            super().__init__(config)
            self.extra = torch.nn.Linear(2, 2)

    for cls, message in ((FirstInFirstOut, "last in, first out"), (SkipFirst, "torch.cat([h, skip], dim=1)"),
                         (NoDownsamplePush, "Downsample included"), (NoHead, "norm_out, SiLU and conv_out"),
                         (NoMiddle, "output differs from the package's UNet"),
                         (ChangedInit, "keep the given __init__")):
        result = checks.check_unet_forward(cls)
        assert not result and message in result.problems[-1], result.problems


def _train_step_by_hand(model, opt, x0, s, g):
    t = torch.randint(0, s.timesteps, (x0.shape[0],), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    ab = s.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    loss = ((model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t) - noise) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_train_step_mistakes():
    assert checks.check_train_step(ref_training.reference_train_step)
    assert checks.check_train_step(_train_step_by_hand)
    def predicts_x0(model, opt, x0, s, g):
        t = torch.randint(0, s.timesteps, (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = F.mse_loss(model(q_sample(x0, t, noise, s), t), x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def never_zeroes(model, opt, x0, s, g):
        t = torch.randint(0, s.timesteps, (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = F.mse_loss(model(q_sample(x0, t, noise, s), t), noise)
        loss.backward()
        opt.step()
        return loss.item()

    def returns_tensor(model, opt, x0, s, g):
        ref_training.reference_train_step(model, opt, x0, s, g)
        return torch.tensor(0.0)

    for fn, message in ((predicts_x0, "not the clean image"), (never_zeroes, "zero the gradients"),
                        (returns_tensor, "Python float")):
        result = checks.check_train_step(fn)
        assert not result and message in result.problems[0], result.problems


def test_ema_mistakes():
    @torch.no_grad()
    def by_hand(ema, model, decay):
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.copy_(decay * p_ema + (1 - decay) * p)

    def rebinds(ema, model, decay):
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema = decay * p_ema + (1 - decay) * p  # noqa: F841

    @torch.no_grad()
    def swapped(ema, model, decay):
        by_hand(ema, model, 1 - decay)

    @torch.no_grad()
    def copies(ema, model, decay):
        ema.load_state_dict(model.state_dict())

    def forgets_no_grad(ema, model, decay):
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.mul_(decay).add_(p, alpha=1 - decay)

    assert checks.check_ema_update(ref_training.reference_ema_update)
    assert checks.check_ema_update(by_hand)
    for fn, message in ((rebinds, "did not change"), (swapped, "are swapped"), (copies, "replaced by the model's"),
                        (forgets_no_grad, "leaf Variable that requires grad is being used in an in-place")):
        result = checks.check_ema_update(fn)
        assert not result and message in result.problems[0], (fn.__name__, result.problems)


def test_accumulation_mistakes():
    def by_hand(model, opt, batch, loss_fn, k):
        opt.zero_grad()
        losses = [loss_fn(model, chunk) * (1 / k) for chunk in batch.chunk(k)]
        for loss in losses:
            loss.backward()
        opt.step()
        return float(sum(loss.item() for loss in losses))

    def unscaled(model, opt, batch, loss_fn, k):
        opt.zero_grad()
        total = 0.0
        for chunk in batch.chunk(k):
            loss = loss_fn(model, chunk)
            loss.backward()
            total += loss.item()
        opt.step()
        return total

    def zeroes_every_chunk(model, opt, batch, loss_fn, k):
        total = 0.0
        for chunk in batch.chunk(k):
            opt.zero_grad()
            loss = loss_fn(model, chunk) / k
            loss.backward()
            total += loss.item()
        opt.step()
        return total

    assert checks.check_accumulated_step(ref_training.reference_accumulated_step)
    assert checks.check_accumulated_step(by_hand)
    for fn, message in ((unscaled, "divide each micro-batch loss"), (zeroes_every_chunk, "zero the gradients once")):
        result = checks.check_accumulated_step(fn)
        assert not result and message in result.problems[0], (fn.__name__, result.problems)
