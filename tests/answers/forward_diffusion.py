"""Answers for notebook 01 (forward diffusion)."""

PRELUDE = "import math\nimport torch\nimport diffusion_course\n"


def exercises(Exercise, Answer):
    return [
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
                Answer("linspace grid, torch.pi and pow", '''
def cosine_betas(timesteps, s=0.008):
    u = torch.linspace(0, 1, timesteps + 1, dtype=torch.float64)
    f = torch.cos((u + s) / (1 + s) * torch.pi / 2).pow(2)
    return torch.clamp(1 - f[1:] / f[:-1], max=0.999)
'''),
            ),
        ),
        Exercise(
            answer="ex_log_snr", function="log_snr", check="check_log_snr",
            tests=("test_log_snr",), prelude=PRELUDE,
            wrong=(
                Answer("alpha_t of one step instead of the cumulative alpha_bar_t", '''
def log_snr(schedule):
    return torch.log(schedule.alphas / (1 - schedule.alphas))
''', says="cumulative product"),
                Answer("computed in float32", '''
def log_snr(schedule):
    alpha_bar = schedule.alphas_cumprod.float()
    return torch.log(alpha_bar / (1 - alpha_bar))
''', says="float64"),
            ),
            delegate=Answer("calls the schedule's own method", '''
def log_snr(schedule):
    return schedule.log_snr()
'''),
            right=(
                Answer("the logit of alpha_bar (the same function)", '''
def log_snr(schedule):
    return torch.special.logit(schedule.alphas_cumprod)
'''),
                Answer("log of the ratio", '''
def log_snr(schedule):
    ab = schedule.alphas_cumprod
    return torch.log(ab / (1 - ab))
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
            answer="ex_q_sample_fixed", function="q_sample_fixed", check="check_q_sample_fixed",
            tests=("test_q_sample_fixed",), prelude=PRELUDE,
            wrong=(
                Answer("index and noise fixed, the shape still hard-coded for images", '''
def q_sample_fixed(x0, t, noise, schedule):
    alpha_bar = schedule.alphas_cumprod[t]
    alpha_bar = alpha_bar.view(-1, 1, 1, 1).to(x0.dtype)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
''', says="x0.ndim"),
                Answer("the wrap-around clamped away, but still t - 1", '''
def q_sample_fixed(x0, t, noise, schedule):
    alpha_bar = schedule.alphas_cumprod[(t - 1).clamp(min=0)]
    alpha_bar = alpha_bar.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
''', says="not t - 1"),
            ),
            delegate=Answer("calls the package", '''
def q_sample_fixed(x0, t, noise, schedule):
    return diffusion_course.diffusion.q_sample(x0, t, noise, schedule)
'''),
            right=(
                Answer("float64 coefficients, no cast back, shape from x0.shape", '''
def q_sample_fixed(x0, t, noise, schedule):
    alpha_bar = schedule.alphas_cumprod[t].view(x0.shape[:1] + (1,) * (x0.dim() - 1))
    return torch.sqrt(alpha_bar) * x0 + torch.sqrt(1 - alpha_bar) * noise
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
