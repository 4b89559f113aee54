"""The Trainer: exact resume, accumulation, stopping rules, checkpoints, logs, precision switches.

Small synthetic images (8x8) with the real ``tiny`` U-Net keep every test to a few seconds;
the data is not the point here (tests/test_train_cli.py trains on real Fashion-MNIST).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal

import pytest
import reference_losses as reference
import torch
import torch.nn.functional as F

import diffusion_course.trainer as trainer_module
from diffusion_course.batching import BatchStream, epoch_permutation, load_training_data
from diffusion_course.checkpoint import load_checkpoint, load_model, save_checkpoint
from diffusion_course.diffusion import DiffusionConfig, q_sample
from diffusion_course.distributed import DistInfo
from diffusion_course.ema import unwrap_model
from diffusion_course.losses import ObjectiveOutput, diffusion_loss
from diffusion_course.runtime import seed_everything
from diffusion_course.sampling import ddpm_sample
from diffusion_course.trainer import NonFiniteLossError, Trainer
from diffusion_course.training import TrainConfig, check_precision, resolve_hflip
from diffusion_course.unet import UNet

SIZE = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=24, channels=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, SIZE, SIZE, generator=g) * 2 - 1, torch.zeros(n, dtype=torch.long)


def make_trainer(out, *, channels=1, dropout=0.1, unet=None, data=None, callbacks=(), **overrides):
    """A Trainer on synthetic data with the real tiny U-Net (dropout on, so RNG state matters)."""
    settings = dict(
        dataset="cifar10", out=str(out), batch_size=4, max_steps=6, warmup_steps=3, log_every=1,
        sample_every=0, checkpoint_every=0, progress=False, timesteps=100, hflip="off",
    )
    settings.update(overrides)
    config = TrainConfig(**settings)
    seed_everything(config.seed)
    out_channels = 2 * channels if config.loss != "simple" else channels
    model = UNet.from_preset(
        "tiny", image_size=SIZE, in_channels=channels, out_channels=out_channels, dropout=dropout,
        **(unet or {}),
    )
    data = data if data is not None else _data(channels=channels)
    return Trainer(config, model, data, callbacks=callbacks)


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# --- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(grad_accum=2, hflip="on"),  # accumulation across an epoch boundary, random flips
        dict(loss="vlb", timestep_sampler="importance", prediction="v", min_snr=5.0),
    ],
    ids=["simple-accum-flip", "vlb-importance-v"],
)
def test_resume_continues_bit_for_bit(tmp_path, monkeypatch, options):
    straight = make_trainer(tmp_path / "a", **options)
    straight.train()
    first = make_trainer(tmp_path / "b", **{**options, "max_steps": 3})
    first.train()
    shutil.copy(first.checkpoint_path, tmp_path / "at3.pt")
    second = make_trainer(tmp_path / "b", **options)  # a new process would start like this
    second.resume()
    assert second.step == 3
    result = second.train()
    assert result.step == straight.step == 6
    assert _same_params(straight.model, second.model)
    assert _same_params(straight.ema.module, second.ema.module)
    for (ka, va), (kb, vb) in zip(straight.optimizer.state_dict()["state"].items(),
                                  second.optimizer.state_dict()["state"].items(), strict=True):
        assert ka == kb and all(torch.equal(va[k], vb[k]) for k in va)
    # the comparison can fail: the same checkpoint resumed without its random states gives other weights
    monkeypatch.setattr(trainer_module, "restore_rng_state", lambda state, generator: True)
    forgetful = make_trainer(tmp_path / "c", **options)
    forgetful.resume(tmp_path / "at3.pt")
    forgetful.train()
    assert forgetful.step == 6 and not _same_params(straight.model, forgetful.model)


# --- one optimizer step -------------------------------------------------------------------------


def test_gradient_accumulation_averages_the_micro_batch_losses(tmp_path):
    trainer = make_trainer(tmp_path, grad_accum=2, dropout=0.0, grad_clip=None)
    captured = {}
    real_step = trainer.optimizer.step

    def spy(*args, **kwargs):
        captured["grads"] = [p.grad.clone() for p in trainer.model.parameters()]
        return real_step(*args, **kwargs)

    trainer.optimizer.step = spy
    stream = trainer.stream.iterate(0)
    batches = [next(stream), next(stream)]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    gen_state = trainer.noise_generator.get_state()
    record = trainer.train_step(batches)

    # redo the two micro-batches by hand with the same random draws, on a copy of the weights
    reference = UNet.from_preset("tiny", image_size=SIZE, in_channels=1, out_channels=1, dropout=0.0)
    reference.load_state_dict(before)
    gen = torch.Generator().manual_seed(0)
    gen.set_state(gen_state)
    losses = []
    for _, images, _ in batches:
        t = torch.randint(0, 100, (4,), generator=gen)
        noise = torch.randn(images.shape, generator=gen)
        x_t = q_sample(images, t, noise, trainer.objective.schedule)
        losses.append(diffusion_loss(reference(x_t, t), images, x_t, noise, t, trainer.objective.schedule).loss)
    total = (losses[0] + losses[1]) / 2
    total.backward()
    assert record["loss"] == pytest.approx(total.item(), rel=1e-5)
    for got, p in zip(captured["grads"], reference.parameters(), strict=True):
        assert torch.allclose(got, p.grad, atol=1e-6)
    assert record["grad_norm"] == pytest.approx(
        torch.cat([p.grad.flatten() for p in reference.parameters()]).norm().item(), rel=1e-4
    )


def test_learning_rate_warms_up_linearly(tmp_path):
    trainer = make_trainer(tmp_path, lr=1e-3, warmup_steps=4)
    assert [trainer.lr_at(s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert make_trainer(tmp_path, lr=1e-3, warmup_steps=0).lr_at(0) == 1e-3


def test_gradient_clipping_bounds_the_update(tmp_path):
    trainer = make_trainer(tmp_path, grad_clip=1e-3, dropout=0.0, lr=1.0)
    stream = trainer.stream.iterate(0)
    seen = {}
    real_step = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen["norm"] = torch.cat([p.grad.flatten() for p in trainer.model.parameters()]).norm().item()
        return real_step(*args, **kwargs)

    trainer.optimizer.step = spy
    record = trainer.train_step([next(stream)])
    assert record["grad_norm"] > 1e-3  # the norm before clipping is logged ...
    assert seen["norm"] == pytest.approx(1e-3, rel=1e-3)  # ... the step uses the clipped gradient


# --- stopping -------------------------------------------------------------------------------------


def test_non_finite_loss_stops_before_the_update_and_names_the_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, checkpoint_every=2, max_steps=10)
    calls = {"n": 0}

    def poison(module, inputs, output):  # the 4th forward pass (step 4) returns NaN
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 4 else output

    trainer.model.register_forward_hook(poison)
    good = {}
    trainer.callbacks.append(lambda tr, rec: good.update({k: v.clone() for k, v in tr.model.state_dict().items()}))
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert "non-finite training loss at step 4 (epoch 0, batch 3 of 6)" in message
    assert f"last good checkpoint: {tmp_path / 'checkpoint.pt'} (step 2)" in message
    assert "\n" not in message
    # the weights are those after step 3: the NaN never reached them, and nothing was saved
    assert all(torch.equal(v, good[k]) for k, v in trainer.model.state_dict().items())
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


def test_after_a_non_finite_step_the_gradients_are_cleared_and_a_lower_lr_goes_on(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4)
    calls = {"n": 0}

    def poison_the_second_step(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 2 else output

    hook = trainer.model.register_forward_hook(poison_the_second_step)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss at step 2"):
        trainer.train()
    assert trainer.step == 1
    assert all(p.grad is None for p in trainer.model.parameters())  # no NaN gradient left to add to
    hook.remove()  # what a user does here: lower the learning rate, and go on in the same session
    trainer.config.lr = 2e-5
    result = trainer.train()
    assert result.step == 4 and math.isfinite(result.last_loss)
    assert [r["lr"] for r in result.history] == pytest.approx([2e-5 * 2 / 3, 2e-5, 2e-5])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_resuming_a_cuda_checkpoint_on_the_cpu_warns_and_goes_on(tmp_path, capsys):
    make_trainer(tmp_path, max_steps=3).train()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    saved = state["rng"][0]
    # what a CUDA run stores: a CUDA generator's state is 16 bytes (seed, offset); a CPU one cannot take it
    state["rng"] = [{"device": "cuda", "noise": torch.zeros(16, dtype=torch.uint8), "torch_cpu": saved["torch_cpu"],
                     "torch_cuda": torch.zeros(16, dtype=torch.uint8)}]
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    capsys.readouterr()
    resumed = make_trainer(tmp_path, max_steps=5)
    resumed.resume()
    assert torch.equal(torch.get_rng_state(), saved["torch_cpu"])  # what can be restored is
    assert torch.equal(resumed.noise_generator.get_state(), torch.Generator().manual_seed(0 + 3).get_state())
    out = capsys.readouterr().out
    assert ("warning: the checkpoint's random state comes from another device type; continuing on cpu with fresh "
            "noise (the run goes on, but not bit for bit)") in out
    result = resumed.train()
    assert result.step == 5 and math.isfinite(result.last_loss)


def test_ctrl_c_finishes_the_step_and_saves(tmp_path):
    def press_ctrl_c(trainer, record):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    trainer = make_trainer(tmp_path, max_steps=50, callbacks=[press_ctrl_c])
    result = trainer.train()
    assert result.reason == "interrupted" and result.step == 3
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_time_limit_saves_a_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=None, max_minutes=1e-6)
    result = trainer.train()
    assert result.reason == "time_limit" and result.step == 1
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1


def test_epochs_limit(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=None, epochs=2, grad_accum=2)
    assert trainer.stream.batches_per_epoch == 6 and trainer.total_steps() == 6
    assert trainer.train().step == 6


# --- what a run leaves behind -----------------------------------------------------------------


def test_checkpoint_holds_everything_as_plain_data(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.data_stats = {"dataset": "synthetic", "count": 24}
    trainer.train()
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True inside
    for key in ("model", "ema", "optimizer", "scaler", "step", "micro_step", "config", "data_stats", "rng",
                "model_config", "objective", "diffusion_config"):
        assert key in state
    assert state["step"] == 2 and state["micro_step"] == 2
    assert TrainConfig.from_dict(state["config"]) == trainer.config
    assert state["model_config"]["channel_mults"] == [1, 2, 2]
    assert state["data_stats"]["count"] == 24
    assert set(state["rng"][0]) == {"device", "noise", "torch_cpu"}  # no Python or NumPy state: nothing draws from them
    model, diffusion, _ = load_model(tmp_path / "checkpoint.pt")
    assert _same_params(model, trainer.ema.module) and not model.training
    assert diffusion == trainer.objective.diffusion
    assert diffusion.to_dict() == {"schedule": "linear", "timesteps": 100, "prediction": "eps",
                                   "variance": "fixed_small", "conditioning": "none", "num_classes": None,
                                   "latent": None}


def test_metrics_log_and_sample_grid(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, log_every=2, sample_every=2, sample_count=4, sample_steps=3)
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    for r in lines:
        assert math.isfinite(r["loss"]) and r["lr"] > 0 and r["images_per_s"] > 0
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    images = trainer.preview(count=2)
    assert images.shape == (2, 1, SIZE, SIZE) and images.abs().max() <= 1


def test_previews_of_a_run_with_fewer_than_sample_steps_timesteps(tmp_path):
    trainer = make_trainer(tmp_path, timesteps=20, max_steps=2, sample_every=2, sample_count=2)
    assert trainer.config.sample_steps == 100  # the default, more than T: the preview takes all 20 steps
    trainer.train()
    assert (tmp_path / "samples" / "step_0000002.png").is_file()


def test_a_learned_variance_model_trains_and_samples(tmp_path):
    images = torch.round((_data()[0] + 1) * 127.5) / 127.5 - 1  # 8-bit values, as the decoder term assumes
    trainer = make_trainer(tmp_path, loss="hybrid", max_steps=1, sample_steps=3, dropout=0.0,
                           data=(images, torch.zeros(24, dtype=torch.long)))
    before = copy.deepcopy(trainer.model)
    gen = torch.Generator().manual_seed(0)
    gen.set_state(trainer.noise_generator.get_state())
    _, x0, _ = next(trainer.stream.iterate(0))
    record = trainer.train().history[-1]
    # the logged values against the independent reference, on the step's own t and noise
    schedule = trainer.objective.schedule
    t = torch.randint(0, 100, (4,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = q_sample(x0, t, noise, schedule)
    with torch.no_grad():
        out = before(x_t, t)
    mse = ((out[:, :1] - noise) ** 2).mean(dim=(1, 2, 3)).double()
    bound = reference.bound_bits(out, x0, x_t, t, schedule)
    assert record["mse"] == pytest.approx(mse.mean().item(), rel=1e-4)
    assert record["vlb"] == pytest.approx(bound.mean().item(), rel=1e-4)
    assert record["loss"] == pytest.approx((mse + 0.001 * 100 * bound).mean().item(), rel=1e-4)
    images = trainer.preview(count=2)  # the 2C-channel output is split into mean and variance
    assert images.shape == (2, 1, SIZE, SIZE)


def test_resume_drops_log_lines_of_steps_that_are_redone(tmp_path):
    def save_at_step_2(trainer, record):
        if record["step"] == 2:
            trainer.save(tmp_path / "at2.pt")

    make_trainer(tmp_path, max_steps=4, callbacks=[save_at_step_2]).train()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    again = make_trainer(tmp_path, max_steps=2)
    again.resume(tmp_path / "at2.pt")  # as if the run had crashed after logging step 4
    assert again.train().step == 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


# --- memory and precision switches ----------------------------------------------------------------


def test_grad_checkpoint_and_channels_last_give_the_same_training(tmp_path):
    plain = make_trainer(tmp_path / "a", max_steps=2, dropout=0.0)
    plain.train()
    checkpointed = make_trainer(tmp_path / "b", max_steps=2, dropout=0.0, unet={"grad_checkpoint": True})
    checkpointed.train()
    assert _same_params(plain.model, checkpointed.model)
    nhwc = make_trainer(tmp_path / "c", max_steps=2, dropout=0.0, channels_last=True)
    nhwc.train()
    for p, q in zip(plain.model.parameters(), nhwc.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)


def test_compile_wraps_the_model_but_saves_the_plain_one(tmp_path):
    trainer = make_trainer(tmp_path, compile=True)  # compiling happens at the first call, not here
    assert trainer.train_model is not trainer.model
    assert unwrap_model(trainer.train_model) is trainer.model
    assert not any(k.startswith("_orig_mod") for k in trainer.state_dict()["model"])


def test_bf16_trains_on_cpu_and_fp16_needs_cuda(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, precision="bf16")
    result = trainer.train()
    assert math.isfinite(result.last_loss)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast, fp32 master weights
    assert check_precision("fp32", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA GPU"):
        check_precision("fp16", torch.device("cpu"))


# --- data order -----------------------------------------------------------------------------------


def test_batch_streams_of_two_ranks_split_each_epoch():
    images = torch.arange(22.0).view(22, 1, 1, 1)
    labels = torch.arange(22)
    streams = [BatchStream((images, labels), 3, seed=5, info=DistInfo(r, 2, r)) for r in range(2)]
    assert streams[0].batches_per_epoch == 3  # 11 images per rank -> 3 full batches of 3
    seen = []
    for stream in streams:
        it = stream.iterate(0)
        seen.append(torch.cat([next(it)[2] for _ in range(3)]))
    assert not set(seen[0].tolist()) & set(seen[1].tolist())  # disjoint shards
    assert set(seen[0].tolist()) | set(seen[1].tolist()) <= set(epoch_permutation(22, 5, 0)[:22].tolist())
    # starting at micro-batch 4 gives what the uninterrupted stream gives there
    it = streams[0].iterate(0)
    straight = [next(it)[2] for _ in range(7)]
    resumed = streams[0].iterate(4)
    assert all(torch.equal(straight[i], next(resumed)[2]) for i in range(4, 7))
    with pytest.raises(ValueError, match="fewer than one batch of 64 per process"):
        BatchStream((images, labels), 64)


def test_dataloader_path_gives_the_same_batches_as_the_tensor_path():
    images, labels = _data(n=10)
    dataset = torch.utils.data.TensorDataset(images, labels)
    a = BatchStream((images, labels), 3, seed=2).iterate(2)
    b = BatchStream(dataset, 3, seed=2, num_workers=0).iterate(2)
    for _ in range(5):
        (ma, xa, _), (mb, xb, _) = next(a), next(b)
        assert ma == mb and torch.equal(xa, xb)


def test_flip_policy_per_dataset():
    assert not resolve_hflip(TrainConfig(dataset="mnist"))
    assert not resolve_hflip(TrainConfig(dataset="fashion-mnist"))  # shoes all point one way
    assert resolve_hflip(TrainConfig(dataset="cifar10"))
    assert resolve_hflip(TrainConfig(dataset="fashion-mnist", hflip="on"))
    with pytest.raises(ValueError, match="not allowed for mnist"):
        TrainConfig(dataset="mnist", hflip="on").validate()


def test_config_validation_and_printing():
    config = TrainConfig()
    assert "batch_size       = 128" in config.describe()
    assert TrainConfig.from_dict(config.to_dict()) == config
    for bad, match in [
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(schedule="quadratic"), "unknown schedule 'quadratic'"),
        (dict(timestep_sampler="importance"), "importance sampling of t is for the 'vlb' loss"),
        (dict(timestep_sampler="importance", loss="hybrid"), "would rescale L_simple too"),
        (dict(ema_decay=1.0), "ema_decay must be in \\[0, 1\\)"),
        (dict(sample_steps=0), "sample_steps must be an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad).validate()
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"batchsize": 3})


def test_real_fashion_mnist_as_one_tensor():
    source, stats = load_training_data(TrainConfig(dataset="fashion-mnist", limit=32), torch.device("cpu"),
                                       progress=False)
    images, labels = source
    assert images.shape == (32, 1, 28, 28) and labels.shape == (32,)
    assert images.min() >= -1 and images.max() <= 1
    assert stats["count"] == 32 and stats["classes"][9] == "Ankle boot" and stats["image_size"] == 28


def test_a_folder_too_big_for_memory_streams_through_a_dataloader(tmp_path, monkeypatch):
    from PIL import Image

    import diffusion_course.batching as batching

    g = torch.Generator().manual_seed(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            pixels = torch.randint(0, 256, (SIZE, SIZE, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    monkeypatch.setattr(batching, "TENSOR_BUDGET_BYTES", 0)  # pretend the folder does not fit
    config = TrainConfig(dataset="folder", data_dir=str(tmp_path / "imgs"), limit=8)
    source, stats = load_training_data(config, torch.device("cpu"), progress=False)
    assert isinstance(source, torch.utils.data.Dataset) and len(source) == 8
    assert stats["count"] == 8 and stats["classes"] == ["cats", "dogs"] and stats["channels"] == 3
    trainer = make_trainer(tmp_path / "run", channels=3, data=source, max_steps=3, num_workers=0)
    assert trainer.train().step == 3  # 2 batches of 4 per epoch: the stream crosses an epoch


# --- the loop is generic: any model, any objective ------------------------------------------------


class Classification:
    """A tiny objective written here: cross-entropy of ``model(x0)`` against soft labels ``[B, 2]``."""

    def __init__(self) -> None:
        self.updates = 0
        self.seen_labels = []

    def __call__(self, model, x0, labels, generator):
        self.seen_labels.append(labels.clone())
        logits = model(x0)
        loss = F.cross_entropy(logits, labels, reduction="none")
        correct = (logits.argmax(1) == labels.argmax(1)).float()
        return ObjectiveOutput(loss=loss.mean(), logs={"accuracy": correct}, feedback={"loss": loss.detach()})

    def update(self, feedback):
        assert feedback["loss"].shape == (16,)  # the step's per-example feedback, gathered
        self.updates += 1

    def records(self):
        return {}

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = state["updates"]


def test_the_trainer_trains_a_classifier_with_its_own_objective(tmp_path):
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 2, (64,), generator=g)
    images = 0.5 * torch.randn(64, 1, SIZE, SIZE, generator=g) + (classes.float() - 0.5).view(-1, 1, 1, 1)
    labels = F.one_hot(classes, 2).float()  # not class indices: the loop never interprets labels
    config = TrainConfig(dataset="cifar10", out=str(tmp_path), batch_size=16, max_steps=20, lr=0.05, warmup_steps=0,
                         log_every=10, sample_every=10, checkpoint_every=0, progress=False, hflip="off", ema_decay=0.5)
    torch.manual_seed(0)
    objective = Classification()
    trainer = Trainer(config, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 2)),
                      (images, labels), objective=objective)
    result = trainer.train()
    first, last = result.history
    assert last["loss"] < first["loss"] and last["accuracy"] > 0.9
    assert objective.updates == 20 and not (tmp_path / "samples").exists()  # nothing to preview
    # the objective got the data's labels untouched, batch by batch
    stream = trainer.stream.iterate(0)
    assert all(torch.equal(seen, next(stream)[2]) for seen in objective.seen_labels[:5])
    state = load_checkpoint(result.checkpoint)
    assert state["objective"] == {"updates": 20} and "diffusion_config" not in state and state["model_config"] is None
    again = Trainer(config, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 2)),
                    (images, labels), objective=Classification())
    again.resume()
    assert again.objective.updates == 20 and _same_params(again.model, trainer.model)


# --- checkpoints of older versions ---------------------------------------------------------------


def test_a_version_1_checkpoint_still_loads_for_sampling_and_resuming(tmp_path):
    options = dict(loss="vlb", timestep_sampler="importance", max_steps=3, timesteps=1000)
    first = make_trainer(tmp_path, **options)
    first.train()
    state = load_checkpoint(first.checkpoint_path)
    # version 1: no DiffusionConfig, no objective entry (the sampler's state under its own key),
    # RNG states without a device but with Python's and NumPy's
    state["version"] = 1
    del state["diffusion_config"]
    state["timestep_sampler"] = state.pop("objective")["timestep_sampler"]
    rng = state["rng"][0]
    del rng["device"]
    rng["python"], rng["numpy"] = [3, [0] * 625, None], ["MT19937", [0] * 624, 624, 0, 0.0]
    save_checkpoint(state, first.checkpoint_path)

    model, diffusion, _ = load_model(first.checkpoint_path)
    assert diffusion == DiffusionConfig(timesteps=1000, variance="learned")  # derived from the run's config
    images = ddpm_sample(model, diffusion.noise_schedule(), (2, 1, SIZE, SIZE), steps=3,
                         generator=torch.Generator().manual_seed(0), variance_type=diffusion.variance)
    assert images.shape == (2, 1, SIZE, SIZE) and torch.isfinite(images).all()

    resumed = make_trainer(tmp_path, **{**options, "max_steps": 4})
    resumed.resume()
    assert resumed.step == 3 and torch.equal(resumed.noise_generator.get_state(), rng["noise"])
    assert torch.equal(resumed.objective.timesteps.losses, first.objective.timesteps.losses)
    assert resumed.train().step == 4
    assert "diffusion_config" in load_checkpoint(first.checkpoint_path)  # saved again as version 2



def test_a_version_1_linear_run_at_another_T_samples_with_its_unscaled_betas(tmp_path):
    """Before the 1000/T scaling, linear betas were 1e-4 .. 0.02 at every T: such a model must be
    sampled with the betas it was trained on."""
    first = make_trainer(tmp_path, max_steps=1)  # T = 100
    first.train()
    state = load_checkpoint(first.checkpoint_path)
    state["version"] = 1
    del state["diffusion_config"]
    save_checkpoint(state, first.checkpoint_path)
    _, diffusion, _ = load_model(first.checkpoint_path)
    assert diffusion.schedule == "linear-unscaled"
    betas = diffusion.noise_schedule().betas
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)


def test_an_objective_cannot_overwrite_checkpoint_entries(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.objective.records = lambda: {"step": 7}
    with pytest.raises(ValueError, match="would overwrite checkpoint entries: step"):
        trainer.state_dict()
