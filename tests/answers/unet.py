"""Answers for notebook 02 (the U-Net).

The block exercises subclass layer-holding classes that the notebook defines in a cell of its
own (``ResBlockLayers``, ``AttentionLayers``); the fast test takes those cells from the solution
notebook itself, so answers and notebook cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[2] / "solutions" / "02_unet" / "02_unet.ipynb"

IMPORTS = "import math\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n"


def _notebook_cell(starts_with: str) -> str:
    """The source of the solution notebook's code cell that starts with ``starts_with``."""
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith(starts_with):
            return source + "\n"
    raise LookupError(f"no code cell of {NOTEBOOK.name} starts with {starts_with!r}")


def exercises(Exercise, Answer):
    res_prelude = IMPORTS + _notebook_cell("class ResBlockLayers")
    attn_prelude = IMPORTS + _notebook_cell("class AttentionLayers")
    unet_prelude = IMPORTS + "from diffusion_course.unet import UNet, UNetBlock\n"
    return [
        Exercise(
            answer="ex_timestep_embedding", function="timestep_embedding", check="check_timestep_embedding",
            tests=("test_timestep_embedding",), prelude=IMPORTS,
            wrong=(
                Answer("cosines first, then sines", '''
def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = max_period ** (-torch.arange(half, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)
''', says="sines first"),
                Answer("exponent divided by dim/2 (the Transformer's own convention)", '''
def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)
''', says="dim/2 - 1"),
                Answer("max_period ignored (10000 hard-coded)", '''
def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)
''', says="max_period argument"),
            ),
            delegate=Answer("calls the package", '''
from diffusion_course.unet import timestep_embedding as package_embedding

def timestep_embedding(t, dim, max_period=10000.0):
    return package_embedding(t, dim, max_period)
'''),
            right=(
                Answer("computed and returned in float64", '''
def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64)
    freqs = torch.exp(-math.log(max_period) * i / (half - 1))
    args = torch.outer(t.double(), freqs)
    return torch.cat([args.sin(), args.cos()], dim=-1)
'''),
            ),
        ),
        Exercise(
            answer="ex_res_block", function="ResBlock", check="check_res_block",
            tests=("test_res_block",), prelude=res_prelude,
            wrong=(
                Answer("time embedding added after the second convolution", '''
class ResBlock(ResBlockLayers):
    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h + self.time_proj(F.silu(temb))[:, :, None, None]
''', says="after the second convolution"),
                Answer("the skip projection forgotten (x + h)", '''
class ResBlock(ResBlockLayers):
    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h + self.time_proj(F.silu(temb))[:, :, None, None])
        return x + self.conv2(self.dropout(F.silu(h)))
''', says="self.skip(x), not x itself"),
                Answer("no residual connection", '''
class ResBlock(ResBlockLayers):
    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h + self.time_proj(F.silu(temb))[:, :, None, None])
        return self.conv2(self.dropout(F.silu(h)))
''', says="residual connection is missing"),
            ),
            delegate=Answer("calls the package's ResBlock.forward on its own layers", '''
from diffusion_course import unet

class ResBlock(ResBlockLayers):
    def forward(self, x, temb):
        self.scale_shift = False
        return unet.ResBlock.forward(self, x, temb)
'''),
            right=(
                Answer("embedding reshaped with view, residual added first", '''
class ResBlock(ResBlockLayers):
    def forward(self, x, temb):
        e = self.time_proj(F.silu(temb))
        h = self.conv1(F.silu(self.norm1(x))) + e.view(e.shape[0], -1, 1, 1)
        return self.skip(x) + self.conv2(self.dropout(F.silu(self.norm2(h))))
'''),
            ),
        ),
        Exercise(
            answer="ex_attention_block", function="AttentionBlock", check="check_attention_block",
            tests=("test_attention_block",), prelude=attn_prelude,
            wrong=(
                Answer("explicit softmax without the 1/sqrt(d) scale", '''
class AttentionBlock(AttentionLayers):
    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x).flatten(2).transpose(1, 2)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, h * w, self.num_heads, -1).transpose(1, 2) for z in (q, k, v))
        weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.proj(out).transpose(1, 2).reshape(b, c, h, w)
''', says="not scaled"),
                Answer("no residual connection", '''
class AttentionBlock(AttentionLayers):
    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x).flatten(2).transpose(1, 2)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, h * w, self.num_heads, -1).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)
''', says="residual connection is missing"),
                Answer("one head whatever num_heads says", '''
class AttentionBlock(AttentionLayers):
    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x).flatten(2).transpose(1, 2)).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out).transpose(1, 2).reshape(b, c, h, w)
''', says="right for one head"),
            ),
            delegate=Answer("calls the package's AttentionBlock.forward on its own layers", '''
from diffusion_course import unet

class AttentionBlock(AttentionLayers):
    def forward(self, x):
        return unet.AttentionBlock.forward(self, x)
'''),
            right=(
                Answer("explicit softmax(q k^T / sqrt(d)) v, heads with einsum", '''
class AttentionBlock(AttentionLayers):
    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.num_heads
        tokens = self.norm(x).reshape(b, c, h * w).permute(0, 2, 1)
        q, k, v = (z.reshape(b, h * w, self.num_heads, d) for z in self.qkv(tokens).chunk(3, dim=-1))
        weights = torch.einsum("bnhd,bmhd->bhnm", q, k).div(math.sqrt(d)).softmax(dim=-1)
        out = torch.einsum("bhnm,bmhd->bnhd", weights, v).reshape(b, h * w, c)
        return x + self.proj(out).permute(0, 2, 1).reshape(b, c, h, w)
'''),
            ),
        ),
        Exercise(
            answer="ex_unet_forward", function="SkipStackUNet", check="check_unet_forward",
            tests=("test_unet_forward",), prelude=unet_prelude,
            wrong=(
                Answer("skips popped in the order they were pushed (first in, first out)", '''
class SkipStackUNet(UNet):
    def forward(self, x, t):
        temb = self.time_embed(t)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, UNetBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, temb)
        for layer in self.up:
            if isinstance(layer, UNetBlock):
                h = layer(torch.cat([h, skips.pop(0)], dim=1), temb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
''', says="last in, first out"),
                Answer("skip concatenated before h", '''
class SkipStackUNet(UNet):
    def forward(self, x, t):
        temb = self.time_embed(t)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, UNetBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, temb)
        for layer in self.up:
            if isinstance(layer, UNetBlock):
                h = layer(torch.cat([skips.pop(), h], dim=1), temb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
''', says="torch.cat([h, skip], dim=1)"),
                Answer("pushes after the blocks only, not after Downsample", '''
class SkipStackUNet(UNet):
    def forward(self, x, t):
        temb = self.time_embed(t)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, UNetBlock):
                h = layer(h, temb)
                skips.append(h)
            else:
                h = layer(h)
        for layer in self.mid:
            h = layer(h, temb)
        for layer in self.up:
            if isinstance(layer, UNetBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), temb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
''', says="Downsample included"),
            ),
            delegate=Answer("calls the package's UNet.forward", '''
class SkipStackUNet(UNet):
    def forward(self, x, t):
        return super().forward(x, t)
'''),
            right=(
                Answer("walks the saved skips backwards with an iterator", '''
class SkipStackUNet(UNet):
    def forward(self, x, t):
        temb = self.time_embed(t)
        saved = [self.conv_in(x)]
        for layer in self.down:
            saved.append(layer(saved[-1], temb) if isinstance(layer, UNetBlock) else layer(saved[-1]))
        h = saved[-1]
        for block in self.mid:
            h = block(h, temb)
        newest_first = reversed(saved)
        for layer in self.up:
            h = layer(torch.cat((h, next(newest_first)), 1), temb) if isinstance(layer, UNetBlock) else layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
'''),
            ),
        ),
    ]
