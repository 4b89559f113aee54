"""Phase 2 and 3 checks: they pass the references and name typical mistakes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion_course import checks, unet
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



# ---------------------------------------------------------------------------------------
# Phase 3: the training checks. Answers are written out (calling the package's own function is
# rejected), each mistake must be named in words, and the checks must compare with the package's
# functions: changing the package's version changes the verdict.
# ---------------------------------------------------------------------------------------


def kl_by_hand(mean1, logvar1, mean2, logvar2):
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def x0_by_hand(x_t, t, eps, s):
    ab = s.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def train_step_by_hand(model, opt, x0, t, noise, s):
    loss = F.mse_loss(model(q_sample(x0, t, noise, s), t), noise)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


@torch.no_grad()
def ema_by_hand(ema_model, model, decay):
    for p_ema, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        p_ema.mul_(decay).add_(p, alpha=1 - decay)


def test_training_checks_pass_answers_written_out():
    assert checks.check_gaussian_kl(kl_by_hand)
    assert checks.check_predict_x0(x0_by_hand)
    assert checks.check_train_step(train_step_by_hand)
    assert checks.check_ema_update(ema_by_hand)


def test_training_checks_compare_with_the_package(monkeypatch):
    from diffusion_course import diffusion, ema, losses

    def doubled(fn):
        return lambda *args, **kwargs: 2 * fn(*args, **kwargs)

    monkeypatch.setattr(losses, "normal_kl", doubled(losses.normal_kl))
    monkeypatch.setattr(diffusion, "predict_x0_from_eps", doubled(diffusion.predict_x0_from_eps))
    monkeypatch.setattr(losses, "ddpm_loss", doubled(losses.ddpm_loss))
    monkeypatch.setattr(ema, "ema_update", lambda e, m, d: None)
    for check, answer in ((checks.check_gaussian_kl, kl_by_hand), (checks.check_predict_x0, x0_by_hand),
                          (checks.check_train_step, train_step_by_hand), (checks.check_ema_update, ema_by_hand)):
        assert not check(answer), check.__name__


def test_gaussian_kl_mistakes():
    def sums(m1, lv1, m2, lv2):
        return kl_by_hand(m1, lv1, m2, lv2).sum()

    def reversed_kl(m1, lv1, m2, lv2):
        return kl_by_hand(m2, lv2, m1, lv1)

    def upside_down_log(m1, lv1, m2, lv2):
        return 0.5 * (lv1 - lv2 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2) - 1)

    def no_half(m1, lv1, m2, lv2):
        return 2 * kl_by_hand(m1, lv1, m2, lv2)

    def no_minus_one(m1, lv1, m2, lv2):
        return kl_by_hand(m1, lv1, m2, lv2) + 0.5

    def delegates(m1, lv1, m2, lv2):
        from diffusion_course.losses import normal_kl

        return normal_kl(m1, lv1, m2, lv2)

    for fn, message in ((sums, "one KL per element"), (reversed_kl, "not symmetric"),
                        (upside_down_log, "log term is upside down"), (no_half, "factor 1/2"),
                        (no_minus_one, "the -1 inside the bracket"), (delegates, "the package's own `normal_kl`")):
        result = checks.check_gaussian_kl(fn)
        assert not result and message in result.problems[0], (fn.__name__, result.problems)


def test_predict_x0_mistakes():
    def no_reshape(x_t, t, eps, s):
        ab = s.alphas_cumprod[t].float()
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def adds_noise(x_t, t, eps, s):
        ab = s.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x_t + (1 - ab).sqrt() * eps) / ab.sqrt()

    def multiplies(x_t, t, eps, s):
        ab = s.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return ab.sqrt() * x_t - (1 - ab).sqrt() * eps

    def previous_t(x_t, t, eps, s):
        ab = s.alphas_cumprod_prev[t].float().view(-1, 1, 1, 1)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def hard_coded_schedule(x_t, t, eps, s):
        from diffusion_course.schedules import get_schedule

        return x0_by_hand(x_t, t, eps, get_schedule("linear", 1000))

    for fn, message in ((no_reshape, "[B, 1, 1, 1]"), (adds_noise, "subtract the noise"), (multiplies, "divide by"),
                        (previous_t, "not t - 1"), (hard_coded_schedule, "each image's own t")):
        result = checks.check_predict_x0(fn)
        assert not result and message in result.problems[0], (fn.__name__, result.problems)


def test_train_step_mistakes():
    def never_steps(model, opt, x0, t, noise, s):
        loss = F.mse_loss(model(q_sample(x0, t, noise, s), t), noise)
        opt.zero_grad()
        return loss.item()

    def zeroes_after_backward(model, opt, x0, t, noise, s):
        loss = F.mse_loss(model(q_sample(x0, t, noise, s), t), noise)
        loss.backward()
        opt.zero_grad()
        opt.step()
        return loss.item()

    def never_zeroes(model, opt, x0, t, noise, s):
        loss = F.mse_loss(model(q_sample(x0, t, noise, s), t), noise)
        loss.backward()
        opt.step()
        return loss.item()

    def returns_tensor(model, opt, x0, t, noise, s):
        train_step_by_hand(model, opt, x0, t, noise, s)
        return torch.tensor(0.0)

    def sums(model, opt, x0, t, noise, s):
        loss = F.mse_loss(model(q_sample(x0, t, noise, s), t), noise, reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def ignores_t(model, opt, x0, t, noise, s):
        zero = torch.zeros_like(t)
        loss = F.mse_loss(model(q_sample(x0, t, noise, s), zero), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def float64_x_t(model, opt, x0, t, noise, s):
        ab = s.alphas_cumprod[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def steps_twice(model, opt, x0, t, noise, s):
        loss = F.mse_loss(model(q_sample(x0, t, noise, s), t), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        opt.step()
        return loss.item()

    for fn, message in ((never_steps, "weights did not move"), (zeroes_after_backward, "weights did not move"),
                        (never_zeroes, "zero the gradients every step"),
                        (returns_tensor, "Python float"), (sums, "do not sum"), (ignores_t, "timesteps t"),
                        (float64_x_t, "float64 input"), (steps_twice, "once each")):
        result = checks.check_train_step(fn)
        assert not result and message in result.problems[0], (fn.__name__, result.problems)


def test_ema_mistakes():
    def rebinds(ema_model, model, decay):
        for p_ema, p in zip(ema_model.parameters(), model.parameters(), strict=True):
            p_ema = decay * p_ema + (1 - decay) * p  # noqa: F841

    def forgets_no_grad(ema_model, model, decay):
        for p_ema, p in zip(ema_model.parameters(), model.parameters(), strict=True):
            p_ema.copy_(decay * p_ema + (1 - decay) * p)

    @torch.no_grad()
    def copies(ema_model, model, decay):
        ema_model.load_state_dict(model.state_dict())

    @torch.no_grad()
    def fixed_decay(ema_model, model, decay):
        ema_by_hand(ema_model, model, 0.9)

    @torch.no_grad()
    def returns_weights(ema_model, model, decay):
        ema_by_hand(ema_model, model, decay)
        return [p.clone() for p in ema_model.parameters()]

    for fn, message in ((rebinds, "did not change"), (forgets_no_grad, "with torch.no_grad():"),
                        (copies, "replaced by the model's"), (fixed_decay, "use the `decay` argument"),
                        (returns_weights, "return nothing")):
        result = checks.check_ema_update(fn)
        assert not result and message in result.problems[0], (fn.__name__, result.problems)
