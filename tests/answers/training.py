"""Answers for notebook 03 (training): the KL term, x0 from the noise, the training step, the EMA.

Two wrong answers per exercise: each extra one is one more whole notebook run in the autograde of
tests/test_notebooks.py. More mistakes (unzeroed gradients, a rebound loop variable, summed
losses, ...) are named by the checks in tests/test_checks_unet_training.py.
"""

PRELUDE = (
    "import copy\nimport math\nimport torch\nimport torch.nn.functional as F\n"
    "import diffusion_course\nfrom diffusion_course.diffusion import q_sample\n"
)


def exercises(Exercise, Answer):
    return [
        Exercise(
            answer="ex_gaussian_kl", function="gaussian_kl", check="check_gaussian_kl",
            tests=("test_gaussian_kl",), prelude=PRELUDE,
            wrong=(
                Answer("variance ratio inverted (sigma2^2 / sigma1^2 in the trace term)", '''
def gaussian_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar2 - logvar1) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)
''', says="variance ratio is inverted"),
                Answer("squared mean difference divided by the first variance", '''
def gaussian_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 / torch.exp(logvar1) - 1)
''', says="divided by the wrong variance"),
            ),
            delegate=Answer("calls the package", '''
from diffusion_course.losses import normal_kl

def gaussian_kl(mean1, logvar1, mean2, logvar2):
    return normal_kl(mean1, logvar1, mean2, logvar2)
'''),
            right=(
                Answer("in float64, with variances and log(sigma2 / sigma1) written out", '''
def gaussian_kl(mean1, logvar1, mean2, logvar2):
    var1, var2 = logvar1.double().exp(), logvar2.double().exp()
    log_ratio = 0.5 * torch.log(var2 / var1)
    return log_ratio + (var1 + (mean1.double() - mean2.double()) ** 2) / (2 * var2) - 0.5
'''),
            ),
        ),
        Exercise(
            answer="ex_predict_x0", function="predict_x0", check="check_predict_x0",
            tests=("test_predict_x0",), prelude=PRELUDE,
            wrong=(
                Answer("square roots missing (alpha_bar where sqrt(alpha_bar) belongs)", '''
def predict_x0(x_t, t, eps, schedule):
    ab = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    return (x_t - (1 - ab) * eps) / ab
''', says="square roots are missing"),
                Answer("alpha_t instead of alpha_bar_t", '''
def predict_x0(x_t, t, eps, schedule):
    a = schedule.alphas[t].float().view(-1, 1, 1, 1)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()
''', says="not alpha_t"),
            ),
            delegate=Answer("calls the package", '''
def predict_x0(x_t, t, eps, schedule):
    return diffusion_course.diffusion.predict_x0_from_eps(x_t, t, eps, schedule)
'''),
            right=(
                Answer("float64 tables, no cast back, reshaped for any number of dimensions", '''
def predict_x0(x_t, t, eps, schedule):
    ab = schedule.alphas_cumprod[t].reshape(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - torch.sqrt(1 - ab) * eps) * torch.rsqrt(ab)
'''),
            ),
        ),
        Exercise(
            answer="ex_train_step", function="train_step", check="check_train_step",
            tests=("test_train_step",), prelude=PRELUDE,
            wrong=(
                Answer("predicts x0 instead of the noise", '''
def train_step(model, optimizer, x0, t, noise, schedule):
    loss = F.mse_loss(model(q_sample(x0, t, noise, schedule), t), x0)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()
''', says="not the clean image x0"),
                Answer("feeds the clean x0 to the network instead of x_t", '''
def train_step(model, optimizer, x0, t, noise, schedule):
    loss = F.mse_loss(model(x0, t), noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()
''', says="not the clean x0"),
            ),
            delegate=Answer("calls the package's loss", '''
from diffusion_course.losses import ddpm_loss

def train_step(model, optimizer, x0, t, noise, schedule):
    loss = ddpm_loss(model, x0, t, noise, schedule)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()
'''),
            right=(
                Answer("x_t by hand from float64 tables (cast for the network), squared error in float64, "
                       "gradients cleared after the step", '''
def train_step(model, optimizer, x0, t, noise, schedule):
    ab = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = (ab.sqrt() * x0 + (1 - ab).sqrt() * noise).to(x0.dtype)
    loss = (model(x_t, t).double() - noise.double()).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())
'''),
            ),
        ),
        Exercise(
            answer="ex_ema_update", function="ema_update", check="check_ema_update",
            tests=("test_ema_update",), prelude=PRELUDE,
            wrong=(
                Answer("decay and 1 - decay swapped", '''
def ema_update(ema_model, model, decay):
    with torch.no_grad():
        for p_ema, p in zip(ema_model.parameters(), model.parameters()):
            p_ema.mul_(1 - decay).add_(p, alpha=decay)
''', says="are swapped"),
                Answer("no torch.no_grad(): the in-place update of a parameter fails", '''
def ema_update(ema_model, model, decay):
    for p_ema, p in zip(ema_model.parameters(), model.parameters()):
        p_ema.mul_(decay).add_(p, alpha=1 - decay)
''', says="torch.no_grad()"),
            ),
            delegate=Answer("calls the package", '''
from diffusion_course import ema

def ema_update(ema_model, model, decay):
    ema.ema_update(ema_model, model, decay)
'''),
            right=(
                Answer("copy_ of the blend, through named parameters, decorator instead of a block", '''
@torch.no_grad()
def ema_update(ema_model, model, decay):
    current = dict(model.named_parameters())
    for name, p_ema in ema_model.named_parameters():
        p_ema.copy_(decay * p_ema + (1 - decay) * current[name])
'''),
            ),
        ),
    ]
