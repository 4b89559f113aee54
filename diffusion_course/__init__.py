"""diffusion-course: the tested building blocks of an interactive course on diffusion models.

Each module is one concept and reads top to bottom like a chapter:

Phase 1, forward diffusion
    :mod:`~diffusion_course.schedules` (beta, alpha-bar, SNR), :mod:`~diffusion_course.diffusion`
    (q(x_t | x_0), its posterior, eps/x0/v conversions), :mod:`~diffusion_course.score` (the score
    and Tweedie's formula), :mod:`~diffusion_course.mixtures` (Gaussian mixtures: exact scores and
    reverse steps) and :mod:`~diffusion_course.toy2d` (a 2-D diffusion model trained in seconds).
Phase 2, the network
    :mod:`~diffusion_course.unet` (time embedding, blocks, the U-Net and its presets).
Phase 3, training
    :mod:`~diffusion_course.losses` (the objective), :mod:`~diffusion_course.timesteps`,
    :mod:`~diffusion_course.ema`, :mod:`~diffusion_course.checkpoint`, :mod:`~diffusion_course.training`
    (TrainConfig), :mod:`~diffusion_course.trainer` (the Trainer), :mod:`~diffusion_course.train` (the
    command line), :mod:`~diffusion_course.batching` and :mod:`~diffusion_course.distributed` (data
    order and DDP).
Phase 4, sampling
    :mod:`~diffusion_course.sampling` (one ``sample()`` over DDPM, DDIM and DPM-Solver++(2M); timestep
    spacings; DDIM inversion and slerp), :mod:`~diffusion_course.pipeline` (a checkpoint ready to
    generate), :mod:`~diffusion_course.pretrained` (notebook 03's model, or a short training),
    :mod:`~diffusion_course.metrics`, :mod:`~diffusion_course.features` and
    :mod:`~diffusion_course.evaluation` (FID, KID and friends on the course classifier's features),
    :mod:`~diffusion_course.sampler_comparison` (quality against steps, for the benchmark and notebook 04).
Around them
    :mod:`~diffusion_course.data` (datasets in [-1, 1], offline first), :mod:`~diffusion_course.viz`
    and :mod:`~diffusion_course.widgets` (pictures and sliders), :mod:`~diffusion_course.checks`
    (instant feedback for exercises), :mod:`~diffusion_course.runtime` (devices, seeds, fast mode),
    :mod:`~diffusion_course.grading` (nbgrader tooling for instructors).
"""

__version__ = "0.1.0"
