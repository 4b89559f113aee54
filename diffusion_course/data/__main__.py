"""``python -m diffusion_course.data prepare [name]``: see :mod:`diffusion_course.data.cli`."""

import sys

from .cli import main

sys.exit(main())
