"""Phase 2 and 3 checks: they pass the references and name typical mistakes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffusion_course import checks, unet
from diffusion_course.checks import training as ref_training
from diffusion_course.checks.unet import MiniUNet
from diffusion_course.diffusion import q_sample


class RefResBlock(unet.ResBlock):
    def __init__(self, cin, cout, time_dim, dropout=0.0, norm_groups=8):
        super().__init__(cin, cout, time_dim, dropout, False, norm_groups)


class RefAttention(unet.AttentionBlock):
    def __init__(self, channels, num_heads=1, norm_groups=8):
        super().__init__(channels, num_heads, norm_groups)


def _embedding_by_hand(t, dim, max_period=10000.0):
    half = dim // 2
    rows = []
    for ti in t.tolist():
        args = [ti * max_period ** (-i / (half - 1)) for i in range(half)]
        rows.append([math.sin(a) for a in args] + [math.cos(a) for a in args])
    return torch.tensor(rows)


def test_timestep_embedding_mistakes():
    assert checks.check_timestep_embedding(unet.timestep_embedding)
    assert checks.check_timestep_embedding(_embedding_by_hand)
    def cos_first(t, dim, max_period=10000.0):
        e = unet.timestep_embedding(t, dim, max_period)
        return torch.cat([e[:, dim // 2:], e[:, : dim // 2]], 1)

    def ignores_period(t, dim, max_period=10000.0):
        return unet.timestep_embedding(t, dim)

    def divides_by_half(t, dim, max_period=10000.0):
        half = dim // 2
        f = torch.exp(-torch.log(torch.tensor(max_period)) * torch.arange(half) / half)
        a = t.float()[:, None] * f
        return torch.cat([a.sin(), a.cos()], 1)

    for fn, message in ((cos_first, "sines first"), (ignores_period, "max_period argument"),
                        (divides_by_half, "dim/2 - 1")):
        result = checks.check_timestep_embedding(fn)
        assert not result and message in result.problems[0], result.problems


def test_res_block_mistakes():
    assert checks.check_res_block(RefResBlock)
    class NoTime(RefResBlock):
        def forward(self, x, temb):
            h = self.conv1(F.silu(self.norm1(x)))
            return self.skip(x) + self.conv2(self.dropout(F.silu(self.norm2(h))))

    class NoSkip(RefResBlock):
        def forward(self, x, temb):
            return super().forward(x, temb) - self.skip(x)

    class ChangedInit(torch.nn.Module):
        def __init__(self, cin, cout, time_dim, dropout=0.0):
            super().__init__()
            self.conv = torch.nn.Conv2d(cin, cout, 3, padding=1)

    for cls, message in ((NoTime, "time embedding has no effect"), (NoSkip, "residual connection"),
                         (ChangedInit, "keep the given __init__")):
        result = checks.check_res_block(cls)
        assert not result and message in result.problems[0], result.problems


def test_attention_mistakes():
    assert checks.check_attention_block(RefAttention)
    class OneHead(RefAttention):
        def forward(self, x):
            q, k, v = self.qkv(self.norm(x).flatten(2).transpose(1, 2)).chunk(3, dim=2)
            out = F.scaled_dot_product_attention(q, k, v)
            return x + self.proj(out).transpose(1, 2).reshape(x.shape)

    class Tokens(RefAttention):
        def forward(self, x):
            return super().forward(x).flatten(2).transpose(1, 2)

    for cls, message in ((OneHead, "right for one head"), (Tokens, "back into [B, C, H, W]")):
        result = checks.check_attention_block(cls)
        assert not result and message in result.problems[0], result.problems


def test_mini_unet_mistakes():
    assert checks.check_mini_unet(MiniUNet)
    class NoSkip(MiniUNet):
        def forward(self, x, t):
            temb = self.time_embed(t)
            skip = self.down_block(self.conv_in(x), temb)
            h = self.mid_attn(self.mid_block(self.downsample(skip), temb))
            h = self.up_block(torch.cat([self.upsample(h), torch.zeros_like(skip)], 1), temb)
            return self.conv_out(F.silu(self.norm_out(h)))

    class NoTime(MiniUNet):
        def forward(self, x, t):
            return super().forward(x, torch.zeros_like(t))

    class Shrinks(MiniUNet):
        def forward(self, x, t):
            return super().forward(x, t)[:, :, ::2, ::2]

    for cls, message in ((NoSkip, "concatenate"), (NoTime, "does not depend on t"), (Shrinks, "input's shape")):
        result = checks.check_mini_unet(cls)
        assert not result and message in result.problems[0], result.problems


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
