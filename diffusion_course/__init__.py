"""diffusion-course: the tested building blocks of an interactive course on diffusion models.

Each module is one concept and reads top to bottom like a chapter:

- :mod:`diffusion_course.schedules` -- variance schedules beta_t, alpha_t, alpha-bar_t, SNR.
- :mod:`diffusion_course.diffusion` -- the forward process q(x_t | x_0) and its posterior.
- :mod:`diffusion_course.data` -- datasets as float tensors in [-1, 1], offline first.
- :mod:`diffusion_course.viz` and :mod:`diffusion_course.widgets` -- pictures and sliders.
- :mod:`diffusion_course.checks` -- instant feedback for the notebook exercises.
- :mod:`diffusion_course.runtime` -- devices, seeds and the fast mode used in CI.
"""

__version__ = "0.1.0"
