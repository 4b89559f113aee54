"""Answers for notebook 01 (forward diffusion)."""

PRELUDE = "import math\nimport torch\nimport diffusion_course\n"


def exercises(Exercise, Answer):
    return [
        Exercise(
            answer="ex_linear_betas", function="linear_betas", check="check_linear_schedule",
            tests=("test_linear_betas",), prelude=PRELUDE,
            wrong=(
                Answer("float32 betas", '''
def linear_betas(timesteps):
    return torch.linspace(1e-4, 0.02, timesteps)
''', says="float64"),
            ),
            delegate=Answer("calls the package", '''
def linear_betas(timesteps):
    return diffusion_course.schedules.linear_betas(timesteps)
'''),
        ),
        Exercise(
            answer="ex_first_t_below", function="first_t_below", check="check_first_t_below",
            tests=("test_first_t_below",), prelude=PRELUDE,
            wrong=(
                Answer("the last t above the level (off by one)", '''
def first_t_below(schedule, level):
    below = (schedule.alphas_cumprod < level).nonzero()
    return int(below[0]) - 1 if len(below) else schedule.timesteps
'''),
            ),
            delegate=Answer("calls the package", '''
def first_t_below(schedule, level):
    return diffusion_course.schedules.first_t_below(schedule, level)
'''),
        ),
        Exercise(
            answer="ex_cosine_betas", function="cosine_betas", check="check_cosine_schedule",
            tests=("test_cosine_betas",), prelude=PRELUDE,
            wrong=(
                Answer("no clip at 0.999", '''
def cosine_betas(timesteps, s=0.008):
    u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return 1 - f[1:] / f[:-1]
''', says="clip betas at 0.999"),
            ),
            delegate=Answer("calls the package", '''
def cosine_betas(timesteps, s=0.008):
    return diffusion_course.schedules.cosine_betas(timesteps, s)
'''),
            right=(
                Answer("float32 grid, cast at the end", '''
def cosine_betas(timesteps, s=0.008):
    u = torch.linspace(0, 1, timesteps + 1, dtype=torch.float64)
    f = torch.cos((u + s) / (1 + s) * torch.pi / 2).pow(2)
    return torch.clamp(1 - f[1:] / f[:-1], max=0.999)
'''),
            ),
        ),
        Exercise(
            answer="ex_q_sample", function="q_sample", check="check_q_sample",
            tests=("test_q_sample",), prelude=PRELUDE,
            wrong=(
                Answer("alpha_bar instead of its square root", '''
def q_sample(x0, t, noise, schedule):
    ab = schedule.alphas_cumprod[t].float().view(-1, *([1] * (x0.ndim - 1)))
    return ab * x0 + (1 - ab) * noise
''', says="noise at the wrong scale"),
            ),
            delegate=Answer("calls the package", '''
from diffusion_course.diffusion import q_sample as package_q_sample

def q_sample(x0, t, noise, schedule):
    return package_q_sample(x0, t, noise, schedule)
'''),
            right=(
                Answer("float64 tables, no cast back (the natural first answer)", '''
def q_sample(x0, t, noise, schedule):
    ab = schedule.alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise
'''),
            ),
        ),
        Exercise(
            answer="ex_q_posterior", function="q_posterior", check="check_q_posterior",
            tests=("test_q_posterior",), prelude=PRELUDE,
            wrong=(
                Answer("variance with alpha_bar_t where alpha_bar_{t-1} belongs", '''
def q_posterior(x0, x_t, t, schedule):
    shape = (-1, *([1] * (x0.ndim - 1)))
    beta, alpha = schedule.betas[t].view(shape), schedule.alphas[t].view(shape)
    ab, ab_prev = schedule.alphas_cumprod[t].view(shape), schedule.alphas_cumprod_prev[t].view(shape)
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    return mean.float(), ((1 - ab) / (1 - ab) * beta).float()
''', says="alpha_bar_{t-1}"),
            ),
            delegate=Answer("calls the package", '''
def q_posterior(x0, x_t, t, schedule):
    return diffusion_course.diffusion.q_posterior(x0, x_t, t, schedule)
'''),
            right=(
                Answer("float64 mean and variance, no final cast", '''
def q_posterior(x0, x_t, t, schedule):
    shape = (-1, *([1] * (x0.ndim - 1)))
    beta, alpha = schedule.betas[t].view(shape), schedule.alphas[t].view(shape)
    ab, ab_prev = schedule.alphas_cumprod[t].view(shape), schedule.alphas_cumprod_prev[t].view(shape)
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    return mean, (1 - ab_prev) / (1 - ab) * beta
'''),
            ),
        ),
    ]
