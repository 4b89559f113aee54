"""Answers for notebook 04 (sampling)."""

PRELUDE = "import math\nimport torch\nimport diffusion_course\nfrom diffusion_course import sampling, metrics\n"

# The DDPM step, right; the wrong answers below change one thing each.
_DDPM_RIGHT = '''
def ddpm_step(eps, x_t, t, schedule, noise, variance_type="fixed_small"):
    alpha_bar, alpha_bar_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod_prev[t]
    beta, alpha = schedule.betas[t], schedule.alphas[t]
    x0_hat = ((x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).clamp(-1, 1)
    mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0_hat \\
        + (alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)) * x_t
    if t == 0:
        return mean, x0_hat
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta if variance_type == "fixed_small" else beta
    return mean + variance.sqrt() * noise, x0_hat
'''

_DDIM_RIGHT = '''
def ddim_step(eps, x_t, t, t_prev, schedule, noise, eta):
    alpha_bar = schedule.alphas_cumprod[t].item()
    alpha_bar_prev = schedule.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    x0_hat = (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
    direction = math.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    return math.sqrt(alpha_bar_prev) * x0_hat + direction + sigma * noise, x0_hat
'''


def exercises(Exercise, Answer):
    return [
        Exercise(
            answer="ex_ddpm_step", function="ddpm_step", check="check_ddpm_step",
            tests=("test_ddpm_step",), prelude=PRELUDE,
            wrong=(
                Answer("no x0 clipping (eq. 11 written directly)", '''
def ddpm_step(eps, x_t, t, schedule, noise, variance_type="fixed_small"):
    alpha_bar, beta, alpha = schedule.alphas_cumprod[t], schedule.betas[t], schedule.alphas[t]
    x0_hat = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    mean = (x_t - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()
    if t == 0:
        return mean, x0_hat
    if variance_type == "fixed_small":
        variance = (1 - schedule.alphas_cumprod_prev[t]) / (1 - alpha_bar) * beta
    else:
        variance = beta
    return mean + variance.sqrt() * noise, x0_hat
''', says="clip"),
                Answer("noise added at the last step too", '''
def ddpm_step(eps, x_t, t, schedule, noise, variance_type="fixed_small"):
    alpha_bar, alpha_bar_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod_prev[t]
    beta, alpha = schedule.betas[t], schedule.alphas[t]
    x0_hat = ((x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).clamp(-1, 1)
    mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0_hat \\
        + (alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)) * x_t
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta if variance_type == "fixed_small" else beta
    return mean + variance.sqrt() * noise, x0_hat
''', says="last step"),
                Answer("alpha_bar_t where alpha_bar_{t-1} belongs (in beta-tilde)", '''
def ddpm_step(eps, x_t, t, schedule, noise, variance_type="fixed_small"):
    alpha_bar, alpha_bar_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod_prev[t]
    beta, alpha = schedule.betas[t], schedule.alphas[t]
    x0_hat = ((x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).clamp(-1, 1)
    mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0_hat \\
        + (alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)) * x_t
    if t == 0:
        return mean, x0_hat
    variance = (1 - alpha_bar) / (1 - alpha_bar) * beta if variance_type == "fixed_small" else beta
    return mean + variance.sqrt() * noise, x0_hat
''', says="alpha_bar_{t-1}"),
            ),
            delegate=Answer("calls the package", '''
def ddpm_step(eps, x_t, t, schedule, noise, variance_type="fixed_small"):
    return sampling.ddpm_step(eps, x_t, t, schedule, noise, variance_type=variance_type)
'''),
            right=(
                Answer("float64 throughout, the posterior written with q_posterior", '''
from diffusion_course.diffusion import q_posterior

def ddpm_step(eps, x_t, t, schedule, noise, variance_type="fixed_small"):
    x_t, eps = x_t.double(), eps.double()
    t_batch = torch.full((x_t.shape[0],), t)
    alpha_bar = schedule.alphas_cumprod[t]
    x0_hat = ((x_t - torch.sqrt(1 - alpha_bar) * eps) / torch.sqrt(alpha_bar)).clamp(min=-1.0, max=1.0)
    mean, posterior_variance = q_posterior(x0_hat, x_t, t_batch, schedule)
    if t > 0:
        variance = posterior_variance if variance_type == "fixed_small" else schedule.betas[t]
        mean = mean + torch.sqrt(variance) * noise.double()
    return mean, x0_hat
'''),
                Answer("the solution as written in the notebook", _DDPM_RIGHT),
            ),
        ),
        Exercise(
            answer="ex_respace_betas", function="respace_betas", check="check_respace_betas",
            tests=("test_respace_betas",), prelude=PRELUDE,
            wrong=(
                Answer("the original betas of the visited steps", '''
def respace_betas(alphas_cumprod, timesteps):
    tau = timesteps.sort().values
    before = torch.cat([torch.ones(1, dtype=alphas_cumprod.dtype), alphas_cumprod[:-1]])
    return (1 - alphas_cumprod / before)[tau]
''', says="original betas"),
                Answer("the sampler's descending order kept", '''
def respace_betas(alphas_cumprod, timesteps):
    kept = alphas_cumprod[timesteps]
    after = torch.cat([kept[1:], torch.ones(1, dtype=kept.dtype)])
    return 1 - kept / after
''', says="ascending"),
                Answer("the first beta taken from the original schedule", '''
def respace_betas(alphas_cumprod, timesteps):
    tau = timesteps.sort().values
    kept = alphas_cumprod[tau]
    betas = 1 - kept[1:] / kept[:-1]
    first = 1 - alphas_cumprod[tau[0]] / alphas_cumprod[tau[0] - 1] if tau[0] > 0 else 1 - alphas_cumprod[0]
    return torch.cat([first.reshape(1), betas])
''', says="alpha_bar = 1"),
            ),
            delegate=Answer("calls the package", '''
def respace_betas(alphas_cumprod, timesteps):
    return sampling.respace_betas(alphas_cumprod, timesteps)
'''),
            right=(
                Answer("a loop over the sorted steps, in float32", '''
def respace_betas(alphas_cumprod, timesteps):
    previous = 1.0
    betas = []
    for t in sorted(timesteps.tolist()):
        betas.append(1 - alphas_cumprod[t].item() / previous)
        previous = alphas_cumprod[t].item()
    return torch.tensor(betas, dtype=torch.float32)
'''),
            ),
        ),
        Exercise(
            answer="ex_ddim_step", function="ddim_step", check="check_ddim_step",
            tests=("test_ddim_step",), prelude=PRELUDE,
            wrong=(
                Answer("+ sigma^2 in the direction term (eta's noise budget with the wrong sign)",
                       _DDIM_RIGHT.replace("1 - alpha_bar_prev - sigma**2", "1 - alpha_bar_prev + sigma**2"),
                       says="minus sigma_t^2"),
                Answer("the noise term subtracted", _DDIM_RIGHT.replace("+ sigma * noise", "- sigma * noise"),
                       says="wrong sign"),
                Answer("alphas_cumprod[-1] for the clean end (t_prev = -1)", '''
def ddim_step(eps, x_t, t, t_prev, schedule, noise, eta):
    alpha_bar, alpha_bar_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod[t_prev]
    x0_hat = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    return alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev - sigma**2).sqrt() * eps + sigma * noise, x0_hat
''', says="alpha_bar = 1"),
            ),
            delegate=Answer("calls the package", '''
def ddim_step(eps, x_t, t, t_prev, schedule, noise, eta):
    return sampling.ddim_step(eps, x_t, t, t_prev, schedule, noise, eta=eta, clip_x0=False)
'''),
            right=(
                Answer("tensors in float64, sigma from the respaced beta-tilde", '''
def ddim_step(eps, x_t, t, t_prev, schedule, noise, eta):
    alpha_bar = schedule.alphas_cumprod[t]
    alpha_bar_prev = schedule.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    beta = 1 - alpha_bar / alpha_bar_prev
    sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * beta)
    x0_hat = (x_t.double() - torch.sqrt(1 - alpha_bar) * eps.double()) / torch.sqrt(alpha_bar)
    x_prev = torch.sqrt(alpha_bar_prev) * x0_hat + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps.double()
    return x_prev + sigma * noise.double(), x0_hat
'''),
                Answer("the solution as written in the notebook", _DDIM_RIGHT),
            ),
        ),
        Exercise(
            answer="ex_fid", function="fid_from_features", check="check_fid_from_features",
            tests=("test_fid",), prelude=PRELUDE,
            wrong=(
                Answer("the trace term missing", '''
def fid_from_features(a, b):
    return float((a.mean(dim=0) - b.mean(dim=0)).square().sum())
''', says="trace term"),
                Answer("an element-wise square root instead of the matrix square root", '''
def fid_from_features(a, b):
    mu1, mu2 = a.mean(dim=0), b.mean(dim=0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * torch.sqrt(s1 * s2).trace())
''', says="matrix square root"),
                Answer("covariances divided by N (biased)", '''
def fid_from_features(a, b):
    mu1, mu2 = a.mean(dim=0), b.mean(dim=0)
    s1, s2 = torch.cov(a.T, correction=0), torch.cov(b.T, correction=0)
    root = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * root)
''', says="N - 1"),
            ),
            delegate=Answer("calls the package", '''
def fid_from_features(a, b):
    return metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b))
'''),
            right=(
                Answer("eigenvalues of S1 S2 (complex type), covariance by hand", '''
def fid_from_features(a, b):
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(dim=0), b.mean(dim=0)
    c1, c2 = a - mu1, b - mu2
    s1, s2 = c1.T @ c1 / (a.shape[0] - 1), c2.T @ c2 / (b.shape[0] - 1)
    trace_root = torch.linalg.eigvals(s1 @ s2).sqrt().sum().real
    return ((mu1 - mu2) @ (mu1 - mu2) + torch.trace(s1 + s2) - 2 * trace_root).item()
'''),
            ),
        ),
    ]
