"""Answers for notebook 05 (conditioning).

The cross-attention exercise subclasses ``CrossAttentionLayers``, which the notebook defines in a cell
of its own; the fast test takes that cell from the solution notebook itself, so answers and notebook
cannot drift apart. At most three wrong answers per exercise: each k-th wrong answer is one more
autograded execution of the whole notebook.
"""

from __future__ import annotations

import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[2] / "solutions" / "05_conditioning" / "05_conditioning.ipynb"

IMPORTS = "import math\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n"


def _notebook_cell(starts_with: str) -> str:
    """The source of the solution notebook's code cell that starts with ``starts_with``."""
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith(starts_with):
            return source + "\n"
    raise LookupError(f"no code cell of {NOTEBOOK.name} starts with {starts_with!r}")


_GUIDE_RIGHT = '''
def guide(cond_out, uncond_out, w, learned_variance=False):
    if learned_variance:
        cond_pred, cond_var = cond_out.chunk(2, dim=1)
        uncond_pred, _ = uncond_out.chunk(2, dim=1)
        return torch.cat([uncond_pred + w * (cond_pred - uncond_pred), cond_var], dim=1)
    return uncond_out + w * (cond_out - uncond_out)
'''

_CROSS_RIGHT = '''
class CrossAttentionBlock(CrossAttentionLayers):
    def forward(self, x, context):
        b, c, h, w = x.shape
        d = c // self.num_heads
        q = self.q(self.norm(x).flatten(2).transpose(1, 2))
        k, v = self.kv(context).chunk(2, dim=-1)
        q, k, v = (z.reshape(b, z.shape[1], self.num_heads, d).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.proj(out).transpose(1, 2).reshape(b, c, h, w)
'''


def exercises(Exercise, Answer):
    cross_prelude = IMPORTS + _notebook_cell("class CrossAttentionLayers")
    return [
        Exercise(
            answer="ex_drop_labels", function="drop_labels", check="check_drop_labels",
            tests=("test_drop_labels",), prelude=IMPORTS,
            wrong=(
                Answer("the comparison the wrong way round (drops a fraction 1 - p)", '''
def drop_labels(labels, u, p_uncond, null_label):
    return torch.where(u >= p_uncond, torch.full_like(labels, null_label), labels)
''', says="1 - p"),
                Answer("dropped labels become 0, a real class", '''
def drop_labels(labels, u, p_uncond, null_label):
    return torch.where(u < p_uncond, torch.zeros_like(labels), labels)
''', says="real class"),
                Answer("the labels changed in place", '''
def drop_labels(labels, u, p_uncond, null_label):
    labels[u < p_uncond] = null_label
    return labels
''', says="changed the labels it was given"),
            ),
            delegate=Answer("calls the package", '''
from diffusion_course.conditioning import drop_labels as package_drop_labels

def drop_labels(labels, u, p_uncond, null_label):
    return package_drop_labels(labels, u, p_uncond, null_label)
'''),
            right=(
                Answer("a copy with masked assignment, in int32", '''
def drop_labels(labels, u, p_uncond, null_label):
    out = labels.to(torch.int32)
    out[u < p_uncond] = null_label
    return out
'''),
                Answer("masked_fill", '''
def drop_labels(labels, u, p_uncond, null_label):
    return labels.masked_fill(u < p_uncond, null_label)
'''),
            ),
        ),
        Exercise(
            answer="ex_guide", function="guide", check="check_guide",
            tests=("test_guide",), prelude=IMPORTS,
            wrong=(
                Answer("Ho & Salimans' (1 + w) eps_cond - w eps_uncond with the package's w",
                       _GUIDE_RIGHT.replace("uncond_pred + w * (cond_pred - uncond_pred)",
                                            "(1 + w) * cond_pred - w * uncond_pred")
                       .replace("uncond_out + w * (cond_out - uncond_out)", "(1 + w) * cond_out - w * uncond_out"),
                       says="1 + w"),
                Answer("guidance anchored on the wrong branch (cond and uncond swapped)",
                       _GUIDE_RIGHT.replace("uncond_pred + w * (cond_pred - uncond_pred)",
                                            "cond_pred + w * (uncond_pred - cond_pred)")
                       .replace("uncond_out + w * (cond_out - uncond_out)", "cond_out + w * (uncond_out - cond_out)"),
                       says="swapped"),
                Answer("the learned-variance channels guided too", '''
def guide(cond_out, uncond_out, w, learned_variance=False):
    return uncond_out + w * (cond_out - uncond_out)
''', says="variance channels"),
            ),
            delegate=Answer("calls the package", '''
from diffusion_course import guidance

def guide(cond_out, uncond_out, w, learned_variance=False):
    return guidance.guide(cond_out, uncond_out, w, learned_variance)
'''),
            right=(
                Answer("torch.lerp in float64, halves by slicing", '''
def guide(cond_out, uncond_out, w, learned_variance=False):
    c = cond_out.shape[1] // 2 if learned_variance else cond_out.shape[1]
    mixed = torch.lerp(uncond_out[:, :c].double(), cond_out[:, :c].double(), w)
    return torch.cat([mixed, cond_out[:, c:].double()], dim=1)
'''),
                Answer("the solution as written in the notebook", _GUIDE_RIGHT),
            ),
        ),
        Exercise(
            answer="ex_cross_attention", function="CrossAttentionBlock", check="check_cross_attention_block",
            tests=("test_cross_attention",), prelude=cross_prelude,
            wrong=(
                Answer("softmax over the pixels instead of the tokens",
                       _CROSS_RIGHT.replace("scores.softmax(dim=-1)", "scores.softmax(dim=-2)"), says="wrong axis"),
                Answer("no residual connection", _CROSS_RIGHT.replace("return x + self.proj", "return self.proj"),
                       says="residual connection is missing"),
                Answer("the scores not divided by sqrt(d)", _CROSS_RIGHT.replace(" / math.sqrt(d)", ""),
                       says="not scaled"),
            ),
            delegate=Answer("calls the package's CrossAttentionBlock.forward on its own layers", '''
from diffusion_course import unet

class CrossAttentionBlock(CrossAttentionLayers):
    def forward(self, x, context):
        return unet.CrossAttentionBlock.forward(self, x, context)
'''),
            right=(
                Answer("scaled_dot_product_attention, heads with einops-free reshapes, float64 math", '''
class CrossAttentionBlock(CrossAttentionLayers):
    def forward(self, x, context):
        b, c, h, w = x.shape
        heads = self.num_heads
        q = self.q(self.norm(x).reshape(b, c, h * w).permute(0, 2, 1)).view(b, h * w, heads, c // heads)
        k, v = (z.view(b, context.shape[1], heads, c // heads) for z in self.kv(context).chunk(2, dim=2))
        weights = torch.einsum("bnhd,blhd->bhnl", q.double(), k.double()) / math.sqrt(c // heads)
        out = torch.einsum("bhnl,blhd->bnhd", weights.softmax(dim=-1), v.double()).reshape(b, h * w, c)
        return x + self.proj(out.float()).permute(0, 2, 1).reshape(b, c, h, w)
'''),
                Answer("the solution's shape with an explicit softmax", _CROSS_RIGHT),
            ),
        ),
        Exercise(
            answer="ex_latent_scale", function="latent_scaling_factor", check="check_latent_scaling_factor",
            tests=("test_latent_scale",), prelude=IMPORTS,
            wrong=(
                Answer("the std itself instead of 1 / std", '''
def latent_scaling_factor(latents):
    return latents.std().item()
''', says="the std itself"),
                Answer("one factor per channel", '''
def latent_scaling_factor(latents):
    return 1 / latents.std(dim=(0, 2, 3))
''', says="one number"),
                Answer("1 / variance", '''
def latent_scaling_factor(latents):
    return 1 / latents.var()
''', says="1 / variance"),
            ),
            delegate=Answer("calls the package", '''
from diffusion_course.latent import latent_scaling_factor as package_factor

def latent_scaling_factor(latents):
    return package_factor(latents)
'''),
            right=(
                Answer("NumPy's std (divides by N, not N - 1), a NumPy float", '''
import numpy as np

def latent_scaling_factor(latents):
    return 1 / np.std(latents.numpy())
'''),
                Answer("a 0-d float32 tensor", '''
def latent_scaling_factor(latents):
    return 1 / torch.std(latents)
'''),
            ),
        ),
    ]
