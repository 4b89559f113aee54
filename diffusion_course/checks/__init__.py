"""Instant feedback for the notebook exercises.

Each ``check_*`` function runs a learner's function on small inputs, compares it with
the package's reference implementation, and *says in words* what is wrong: a wrong
shape, noise at the wrong scale, t indexed off by one, a missing clip. It prints its
verdict and never raises, so "Run all" keeps going; the graded test cell that follows
is the one that counts. Graded tests compare with :func:`assert_close`, the same comparison
the checks make (any floating dtype, exact shape), so a check and its test accept and reject
the same answers; :func:`assert_own_work` fails an answer that calls the package's own
version of the function it was asked to write, and every check says so too.

Every check returns a :class:`CheckResult`, true when everything passed.
One submodule per phase: ``forward`` (Phase 1), ``unet`` (Phase 2), ``training`` (Phase 3),
``sampling`` (Phase 4), ``conditioning`` (Phase 5; its graded tests compare integer labels with
:func:`assert_labels`).
"""

from ._core import CheckResult, assert_close, assert_own_work
from .conditioning import (
    assert_labels,
    check_cross_attention_block,
    check_drop_labels,
    check_guide,
    check_latent_scaling_factor,
)
from .forward import (
    check_cosine_schedule,
    check_log_snr,
    check_q_posterior,
    check_q_sample,
    check_q_sample_fixed,
)
from .sampling import check_ddim_step, check_ddpm_step, check_fid_from_features, check_respace_betas
from .training import check_ema_update, check_gaussian_kl, check_predict_x0, check_train_step
from .unet import check_attention_block, check_res_block, check_timestep_embedding, check_unet_forward

__all__ = [
    "CheckResult",
    "assert_close",
    "assert_labels",
    "assert_own_work",
    "check_attention_block",
    "check_cross_attention_block",
    "check_drop_labels",
    "check_guide",
    "check_latent_scaling_factor",
    "check_ddim_step",
    "check_ddpm_step",
    "check_ema_update",
    "check_gaussian_kl",
    "check_predict_x0",
    "check_fid_from_features",
    "check_res_block",
    "check_respace_betas",
    "check_timestep_embedding",
    "check_unet_forward",
    "check_train_step",
    "check_cosine_schedule",
    "check_log_snr",
    "check_q_posterior",
    "check_q_sample",
    "check_q_sample_fixed",
]
