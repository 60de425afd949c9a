import copy
import math

import pytest
import torch
from torch.optim.swa_utils import update_bn

from glann import Sampler, train
from glann.cli import main
from glann.data import load_dataset
from glann.errors import ConfigError
from glann.evaluate.metrics import diversity
from glann.gan import diagnose, discriminator_loss, generator_loss, gradient_penalty, r1_penalty, train_gan
from glann.images import to_model
from glann.nets import Discriminator, Generator, build_discriminator
from glann.checkpoints import load_checkpoint
from glann.nets import build_generator
from glann.runs import Run

# Tiny: 64 shapes, batches of 16, narrow nets: a GAN epoch is a fraction of a second.
GAN_TINY = ("method=gan", "data.limit=64", "gan.batch_size=16", "gan.ndf=8", "gan.epochs=1")


@pytest.fixture(autouse=True)
def _one_thread():
    # Nets this small gain nothing from a second thread, and on a shared CPU OpenMP's
    # spin-waiting makes two threads 30x slower than one.
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


HEALTHY = {"d_acc_real": 0.7, "d_acc_fake": 0.7, "g_grad_norm": 1.0, "diversity_ratio": 0.9}


def _finite(result) -> bool:
    return all(math.isfinite(v) for h in result.history for v in h.values())


# The speed switches `auto` turns on for images on a CPU with native bf16 (the race runs with them).
PERF_ON = ("perf.amp=bf16", "perf.channels_last=true", "perf.fused_adam=true")
PERF = pytest.mark.parametrize("perf", [(), PERF_ON], ids=["fp32", "bf16"])


@PERF
@pytest.mark.parametrize("loss", ["minimax", "nonsaturating", "lsgan", "wgan-gp", "hinge"])
def test_each_gan_loss_trains_with_finite_losses(tiny, loss, perf):
    extra = ("gan.d_batch_norm=false",) if loss == "wgan-gp" else ()
    cfg = tiny(*GAN_TINY, f"gan.loss={loss}", *extra, *perf)
    result = train_gan(load_dataset(cfg.data, seed=cfg.seed), cfg)
    assert result.g_steps == 4 and _finite(result)


@pytest.mark.parametrize("switch", [
    ("gan.label_smoothing=0.1",), ("gan.minibatch_std=true",), ("gan.pack=2",), ("gan.spectral_norm=true",),
    ("gan.r1_gamma=10", "gan.d_batch_norm=false"), ("gan.feature_matching=1.0",), ("gan.n_critic=2",),
    ("gan.lr_discriminator=0.0004", "gan.lr_generator=0.0001"), ("gan.ema=0.9",),
], ids=lambda s: s[0].split("=")[0])
@PERF
def test_each_stabiliser_trains_with_finite_losses(tiny, switch, perf):
    cfg = tiny(*GAN_TINY, *switch, *perf)
    result = train_gan(load_dataset(cfg.data, seed=cfg.seed), cfg)
    assert result.g_steps == (2 if "gan.n_critic=2" in switch else 4) and _finite(result)


def test_gan_takes_glos_perf_switches_and_trains_like_fp32(tiny, monkeypatch):
    # The race is even only if the GAN baseline gets the speed switches GLO gets.
    cfg = tiny(*GAN_TINY, "gan.epochs=2")
    data = load_dataset(cfg.data, seed=cfg.seed)
    base = train_gan(data, cfg)
    autocasts, real_autocast = [], torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        autocasts.append((dtype, enabled))
        return real_autocast(device_type, dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    fast = train_gan(data, tiny(*GAN_TINY, "gan.epochs=2", *PERF_ON))
    assert autocasts and all(a == (torch.bfloat16, True) for a in autocasts)
    assert fast.g_steps == base.g_steps and _finite(fast)
    # Same initialisation and batches: the diagnostics and weights differ only by bf16 rounding.
    for epoch in range(2):
        for key in ("g_grad_norm", "diversity_ratio"):
            assert abs(fast.history[epoch][key] - base.history[epoch][key]) < 0.05 * abs(base.history[epoch][key])
    a, b = (torch.cat([p.detach().reshape(-1) for p in r.generator.parameters()]) for r in (base, fast))
    assert 0 < (a - b).norm() < 0.02 * a.norm()  # the switches changed the arithmetic, only by rounding
    conv = [p for p in fast.discriminator.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
    assert any(not p.is_contiguous() for p in conv)  # (a 1-channel kernel is both layouts at once)
    assert all(p.dtype == torch.float32 for p in fast.generator.parameters())
    assert all(p.dtype == torch.float32 for p in fast.discriminator.parameters())


def test_pacgan_multiplies_discriminator_input_channels_and_divides_decisions(tiny):
    D = build_discriminator(tiny("gan.pack=4", "gan.ndf=8"), (3, 32, 32))
    assert D.body[0].in_channels == 12
    assert D(torch.zeros(8, 3, 32, 32)).shape == (2,)
    with pytest.raises(ValueError, match="packs of 4"):
        D(torch.zeros(6, 3, 32, 32))


@pytest.mark.parametrize("size", [28, 32, 64, 128])
def test_discriminator_takes_every_image_size(size):
    D = Discriminator(size, 1, ndf=4, minibatch_std=True, spectral_norm=True)
    logits, feats = D(torch.zeros(4, 1, size, size), return_features=True)
    assert logits.shape == (4,) and feats.shape == (4, D.feature_dim)


def test_gradient_penalties_are_nonzero_for_a_non_lipschitz_discriminator():
    torch.manual_seed(0)
    D = Discriminator(28, 1, ndf=8, batch_norm=False)
    with torch.no_grad():
        for p in D.parameters():
            p.mul_(10.0)  # gradients far steeper than 1
    real, fake = torch.rand(8, 1, 28, 28) * 2 - 1, torch.rand(8, 1, 28, 28) * 2 - 1
    assert gradient_penalty(D, real, fake, torch.Generator().manual_seed(0)).item() > 1.0
    real.requires_grad_(True)
    assert r1_penalty(D(real), real).item() > 1.0


def test_wgan_gp_with_batch_norm_in_the_critic_is_a_config_error(tiny):
    with pytest.raises(ConfigError, match="d_batch_norm=false"):
        tiny("gan.loss=wgan-gp")


def test_one_sided_label_smoothing_lowers_the_real_target_only():
    confident_real, confident_fake = torch.full((4,), 20.0), torch.full((4,), -20.0)
    assert discriminator_loss("nonsaturating", confident_real, confident_fake).item() < 1e-6
    smoothed = discriminator_loss("nonsaturating", confident_real, confident_fake, smoothing=0.1).item()
    assert smoothed > 1.0  # a confident D is now penalised on real data, and only there


def test_diagnose_flags_a_generator_that_outputs_one_image(tiny):
    cfg = tiny()
    data = load_dataset(cfg.data, seed=cfg.seed)
    real_div = diversity(to_model(data.images[:64]))
    G = Generator(16, 28, 1, ngf=16, fc_dim=128)
    with torch.no_grad():  # the last layer ignores its input: every code gives the same image
        G.body[-2].weight.zero_()
        G.body[-2].bias.fill_(0.3)
    collapsed = {**HEALTHY, "diversity_ratio": diversity(G.eval()(torch.randn(64, 16))) / real_div}
    assert collapsed["diversity_ratio"] < 0.01
    assert "collapse" in diagnose([HEALTHY, collapsed])
    assert diagnose([HEALTHY, HEALTHY]) == {}


def test_diagnose_flags_vanishing_gradients_of_the_saturating_loss():
    # A discriminator sure of every decision (logit -15 on fakes): the minimax generator loss
    # log(1 - D(G(z))) then gives G almost no gradient; the non-saturating one does not.
    torch.manual_seed(0)
    G = Generator(16, 28, 1, ngf=16, fc_dim=128)
    D = Discriminator(28, 1, ndf=8, batch_norm=False)
    with torch.no_grad():
        D.head.bias.fill_(-15.0 - D(G(torch.randn(16, 16))).mean().item())
    norms = {}
    for loss in ("minimax", "nonsaturating"):
        G.zero_grad()
        generator_loss(loss, D(G(torch.randn(16, 16)))).backward()
        norms[loss] = torch.nn.utils.clip_grad_norm_(G.parameters(), float("inf")).item()
    won = {"d_acc_real": 1.0, "d_acc_fake": 1.0, "diversity_ratio": 0.9}
    start = {**HEALTHY, "g_grad_norm": norms["nonsaturating"]}
    assert "vanishing" in diagnose([start, {**won, "g_grad_norm": norms["minimax"]}])
    assert "vanishing" not in diagnose([start, {**won, "g_grad_norm": norms["nonsaturating"]}])


def test_diagnose_flags_oscillation_of_the_discriminator():
    swinging = [{**HEALTHY, "d_acc_fake": a} for a in (0.2, 0.9, 0.1, 0.95, 0.2, 0.9)]
    steady = [{**HEALTHY, "d_acc_fake": a} for a in (0.6, 0.62, 0.61, 0.63, 0.62, 0.64)]
    assert "oscillation" in diagnose(swinging)
    assert "oscillation" not in diagnose(steady)


def test_gan_budget_in_generator_updates_stops_training(tiny):
    cfg = tiny(*GAN_TINY, "gan.epochs=5", "gan.max_steps=6")
    result = train_gan(load_dataset(cfg.data, seed=cfg.seed), cfg)
    assert result.g_steps == 6 and len(result.history) == 2


def test_gan_train_then_sample_end_to_end(tiny, tmp_path, capsys):
    cfg = tiny(*GAN_TINY, "name=gan", "gan.epochs=2")
    assert main(["train", "configs/tiny.yaml", f"out_dir={tmp_path}", *GAN_TINY[:-1], "name=gan", "gan.epochs=2"]) == 0
    run = tmp_path / "gan"
    assert (run / "model.safetensors").is_file() and (run / "samples.png").is_file()
    assert [r["step"] for r in Run(run, cfg).read_metrics() if r["stage"] == "gan"] == [0, 1]
    s = Sampler.from_pretrained(run, device="cpu")
    assert s.mapper is None
    x = s.sample(5, seed=3)
    assert x.shape == (5, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, s.sample(5, seed=3))
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "g.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "g.png").is_file()


@pytest.mark.parametrize("ema", [(), ("gan.ema=0.9",)], ids=["plain", "ema"])
def test_gan_resume_equals_uninterrupted(tiny, tmp_path, ema):
    # With gan.ema the checkpoint keeps the moving average too: the exported one must match.
    full = tiny(*GAN_TINY, "name=full", "gan.epochs=2", "gan.minibatch_std=true", "gan.spectral_norm=true", *ema)
    train(full)
    half = tiny(*GAN_TINY, "name=half", "gan.epochs=1", "gan.minibatch_std=true", "gan.spectral_norm=true", *ema)
    train(half)
    # The saved config wins on resume, so lengthen the run the way a user would: edit its config.yaml.
    cfg_file = tmp_path / "half" / "config.yaml"
    cfg_file.write_text(_set_gan_epochs(cfg_file.read_text(), 2))
    train(half, resume=True)
    a = Sampler.from_pretrained(tmp_path / "full", device="cpu")
    b = Sampler.from_pretrained(tmp_path / "half", device="cpu")
    for (k, va), (_, vb) in zip(a.generator.state_dict().items(), b.generator.state_dict().items()):
        assert torch.equal(va, vb), k


def _set_gan_epochs(yaml_text: str, epochs: int) -> str:
    from omegaconf import OmegaConf

    conf = OmegaConf.create(yaml_text)
    conf.gan.epochs = epochs
    return OmegaConf.to_yaml(conf)


def test_gan_logs_domain_fd_each_epoch_with_eval_every_1(tiny, tmp_path, monkeypatch):
    # The same training-time check as GLANN's IMLE stage, so a report races both on one metric.
    monkeypatch.setenv("GLANN_CACHE", str(tmp_path / "cache"))  # the shapes classifier, cached here
    cfg = tiny(*GAN_TINY, "name=gan_fd", "gan.epochs=2", "eval.every=1", "eval.num_samples=64")
    run = train(cfg)
    fds = [r.get("domain_fd") for r in Run(run, cfg).read_metrics() if r["stage"] == "gan"]
    assert len(fds) == 2 and all(isinstance(v, float) and v >= 0 for v in fds)


def _initial_generator(cfg) -> Generator:
    """G as _setup_gan builds it before any step (module initialisation draws from the global RNG)."""
    torch.manual_seed(cfg.seed)
    return build_generator(cfg, load_dataset(cfg.data, seed=cfg.seed).shape)


def _distance(a: Generator, b: Generator) -> float:
    return sum((pa - pb).pow(2).sum() for pa, pb in zip(a.parameters(), b.parameters())).sqrt().item()


def test_gan_ema_exports_the_moving_average_of_the_generator(tiny):
    # A slow average stays near where G started; a fast one follows G. Training itself is unchanged:
    # the trained G (in the checkpoint) is the same with the average on or off.
    runs = {}
    for name, ema in (("off", ()), ("slow", ("gan.ema=0.99",)), ("fast", ("gan.ema=0.01",))):
        cfg = tiny(*GAN_TINY, f"name={name}", "gan.epochs=3", *ema)
        path = train(cfg)
        trained = _initial_generator(cfg)
        trained.load_state_dict(load_checkpoint(Run(path, cfg).checkpoint_path("gan"))["generator"])
        runs[name] = (trained, Sampler.from_pretrained(path, device="cpu").generator, cfg)
    start = _initial_generator(runs["off"][2])
    trained, off, _ = runs["off"]
    assert _distance(trained, off) == 0  # off: the exported G is the trained one
    for name in ("slow", "fast"):
        assert _distance(runs[name][0], trained) == 0, name
    slow, fast = runs["slow"][1], runs["fast"][1]
    # 12 steps: the slow average keeps 0.99^12 = 0.89 of its start
    assert _distance(slow, start) < 0.5 * _distance(trained, start)
    assert _distance(fast, trained) < 0.05 * _distance(trained, start)
    # Its batch-norm statistics are its own weights' (re-estimated on other noise they agree), not
    # the trained G's running ones (momentum 0.1 over its 12 steps, which also differ by weights).
    own = copy.deepcopy(slow)
    update_bn([torch.randn(16, runs["slow"][2].model.nz) for _ in range(100)], own)
    norms = [(m, o, t) for m, o, t in zip(slow.modules(), own.modules(), runs["slow"][0].modules())
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    for m, o, t in norms:
        gap = lambda a, b: ((a.running_var - b.running_var).abs() / b.running_var).mean().item()  # noqa: E731
        assert gap(m, o) < 0.1 < gap(t, o)


def test_gan_ema_of_one_or_more_is_a_config_error(tiny):
    with pytest.raises(ConfigError, match=r"gan.ema must be in \[0, 1\)"):
        tiny(*GAN_TINY, "gan.ema=1")
