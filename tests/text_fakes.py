"""Test doubles for the text-conditioning tests."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch


class DoubleCFG:
    """A stand-in for ``guidance.ClassifierFreeGuidance`` while that module is not merged: one batched
    forward of [conditional, null], then ``uncond + w (cond - uncond)``."""

    def __init__(self, model, cond, null_cond, scale, *, variance_type="fixed_small"):
        self.model, self.cond, self.null, self.scale = model, cond, null_cond, scale

    def __call__(self, x, t):
        b = x.shape[0]
        both = {k: torch.cat([self.cond[k].expand(b, -1), self.null[k].to(x.device).expand(b, -1)]) for k in self.cond}
        cond, uncond = self.model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        return uncond + self.scale * (cond - uncond)


def guidance_module(monkeypatch):
    """The real ``diffusion_course.guidance`` where it exists, else :class:`DoubleCFG` installed in its place."""
    try:
        return importlib.import_module("diffusion_course.guidance")
    except ImportError:
        fake = ModuleType("diffusion_course.guidance")
        fake.ClassifierFreeGuidance = DoubleCFG
        monkeypatch.setitem(sys.modules, "diffusion_course.guidance", fake)
        return fake
