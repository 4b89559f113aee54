"""Sampling: turning noise into images by running a learned reverse process.

Read the modules in this order:

:mod:`.spacing`     which timesteps a sampler visits (``trailing`` / ``leading`` / ``linspace``) and
                    the respaced betas of the shorter chain (Improved DDPM sec. 4)
:mod:`.base`        the step protocol: ``set_timesteps(steps)``, then ``step(output, i, x_t, noise)``
:mod:`.ddpm`        DDPM ancestral sampling (Algorithm 2, eq. 11); fixed or learned variance
:mod:`.ddim`        DDIM (eqs. 12 and 16): deterministic at eta = 0, DDPM-like at eta = 1
:mod:`.dpm_solver`  DPM-Solver++(2M): second order, 10-20 model calls
:mod:`.loop`        :func:`sample`, the one entry point (and the legacy :func:`ddpm_sample`)
:mod:`.inversion`   DDIM inversion (image -> noise) and slerp between noises
:mod:`.editing`     SDEdit (edit a noised real image) and RePaint inpainting, with any sampler

Example::

    from diffusion_course.sampling import sample
    images = sample(model, config.noise_schedule(), (16, 1, 28, 28), sampler="dpm-solver++", steps=20,
                    prediction_type=config.prediction, variance_type=config.variance,
                    generator=torch.Generator().manual_seed(0))
"""

from .base import Sampler, alpha_bar_at
from .ddim import DDIMSampler, ddim_sigma, ddim_step
from .ddpm import DDPMSampler, ddpm_step
from .dpm_solver import DPMSolverSampler, dpm_solver_2m_step, half_log_snr
from .editing import inpaint, sdedit
from .inversion import ddim_inversion_step, ddim_invert, slerp
from .loop import SAMPLERS, Trajectory, ddpm_sample, make_sampler, run_sampler, sample
from .spacing import SPACINGS, respace_betas, respace_schedule, respaced_timesteps, spaced_timesteps

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "Sampler",
    "Trajectory",
    "alpha_bar_at",
    "ddim_inversion_step",
    "ddim_invert",
    "ddim_sigma",
    "ddim_step",
    "ddpm_sample",
    "ddpm_step",
    "dpm_solver_2m_step",
    "half_log_snr",
    "inpaint",
    "make_sampler",
    "respace_betas",
    "respace_schedule",
    "respaced_timesteps",
    "run_sampler",
    "sample",
    "sdedit",
    "slerp",
    "spaced_timesteps",
]
