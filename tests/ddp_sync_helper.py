"""Run under torchrun by tests/test_ddp.py: the replica check must notice a rank that drifted."""

from __future__ import annotations

import torch

from diffusion_course.distributed import cleanup_distributed, init_distributed, parameters_in_sync
from diffusion_course.unet import UNet

if __name__ == "__main__":
    info, device = init_distributed(torch.device("cpu"))
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = UNet.from_preset("tiny", image_size=8, in_channels=1, out_channels=1)
    assert info.world_size == 2
    assert parameters_in_sync(model, info), "identical replicas reported as different"
    if info.rank == 1:
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] += 1e-6  # one number on one rank
    assert not parameters_in_sync(model, info), "a drifted replica went unnoticed"
    if info.rank == 0:
        print("sync-check-ok", flush=True)
    cleanup_distributed()
