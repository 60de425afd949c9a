"""Vector data (2-D mixtures) and stacked data: the mode-collapse benchmarks' data, nets and counts."""
import json
import math

import pytest
import torch

from conftest import ROOT, ring_config
from glann import Sampler, train
from glann.config import load_config
from glann.data import load_dataset, make_mixture, make_shapes, mixture_spec, stack_channels
from glann.errors import ConfigError, DataError
from glann.evaluate.modes import mixture_modes, stacked_modes
from glann.evaluate.suite import evaluate_run
from glann.gan import gradient_penalty, train_gan
from glann.glo import train_glo
from glann.nets import build_discriminator, build_generator
from glann.nets import MinibatchStd, MLPDiscriminator, MLPGenerator


pytestmark = pytest.mark.usefixtures("one_thread")


def ring(tmp_path, *overrides):
    """configs/ring8.yaml shrunk to seconds: 512 points, narrow nets."""
    return ring_config(tmp_path, *overrides)


# ---------------------------------------------------------------- data

@pytest.mark.parametrize("name,k", [("ring8", 8), ("grid25", 25)])
def test_mixture_points_lie_at_their_components(name, k):
    centres, std = mixture_spec(name)
    points, labels = make_mixture(name, 4000, seed=0)
    assert points.shape == (4000, 2) and centres.shape == (k, 2)
    assert (points - centres[labels]).norm(dim=1).max() < 6 * std
    assert torch.bincount(labels, minlength=k).min() > 4000 / k / 2  # every component drawn


def test_mixture_dataset_is_the_same_whatever_the_training_seed(tmp_path):
    a = load_dataset(ring(tmp_path).data, seed=0)
    b = load_dataset(ring(tmp_path).data, seed=5)
    test = load_dataset(ring(tmp_path, "data.split=test").data)
    assert a.is_vector and a.shape == (2,) and len(a) == 512
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, test.images)


def test_stacked_images_carry_each_channels_class():
    images, labels = make_shapes(200, 28, seed=0)
    stacked, modes = stack_channels(images, labels, 300, seed=1)
    assert stacked.shape == (300, 3, 28, 28) and stacked.dtype == torch.uint8
    k = 4
    for c, digit in enumerate([modes // (k * k), modes // k % k, modes % k]):
        # each channel is one of the source images, and the label's digit is that image's class
        match = (stacked[:, c:c + 1, None] == images[None]).flatten(2).all(2)  # 300 x 200
        src = match.float().argmax(1)
        assert match.any(1).all() and torch.equal(labels[src], digit)


def test_stack_refuses_unlabelled_or_colour_sources():
    images, labels = make_shapes(10, 28)
    with pytest.raises(DataError, match="labels"):
        stack_channels(images, None, 5)
    with pytest.raises(DataError, match="grey"):
        stack_channels(images.expand(-1, 3, -1, -1), labels, 5)


def test_config_refuses_image_losses_and_stacking_for_points(tmp_path):
    with pytest.raises(ConfigError, match="glo.loss=l2"):
        ring(tmp_path, "glo.loss=lap1")
    with pytest.raises(ConfigError, match="stack"):
        ring(tmp_path, "data.stack=3")
    with pytest.raises(ConfigError, match="data.stack must be 1 or 3"):
        load_config(ROOT / "configs" / "tiny.yaml", ["data.stack=2"])


# ---------------------------------------------------------------- counting modes

def test_mixture_modes_on_perfect_collapsed_and_off_mode_samples():
    centres, std = mixture_spec("grid25")
    perfect = centres.repeat(40, 1) + 0.5 * std * torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    m = mixture_modes(perfect, centres, std)
    assert m["modes_covered"] == 25 and m["high_quality_share"] == 1.0 and m["mode_kl"] < 1e-6
    collapsed = mixture_modes(centres[3].repeat(500, 1), centres, std)
    assert collapsed["modes_covered"] == 1 and collapsed["mode_kl"] == pytest.approx(math.log(25))
    between = mixture_modes(centres[:-1] + 1.0, centres, std)  # half-way between grid points
    assert between["high_quality_share"] == 0.0 and between["modes_covered"] == 0


def test_stacked_modes_count_channel_class_triples():
    k = 10
    classes = torch.tensor([[0, 0, 0], [0, 0, 1], [9, 9, 9], [0, 0, 0]])
    probs = [torch.nn.functional.one_hot(classes[:, c], k).float() for c in range(3)]
    m = stacked_modes(probs)
    assert m["num_modes"] == 1000 and m["modes_covered"] == 3 and m["confident_share"] == 1.0
    assert m["mode_kl"] == pytest.approx(math.log(1000) - (0.5 * math.log(2) + 0.5 * math.log(4)))


# ---------------------------------------------------------------- nets

def test_mlp_nets_shapes_packing_and_penalty(tmp_path):
    cfg = ring(tmp_path, "gan.pack=4", "gan.minibatch_std=true")
    G, D = build_generator(cfg, (2,)), build_discriminator(cfg, (2,))
    assert isinstance(G, MLPGenerator) and isinstance(D, MLPDiscriminator)
    x = G(torch.randn(16, cfg.model.nz))
    assert x.shape == (16, 2)
    assert D.body[0].in_features == 2 * 4  # PacGAN: four points per decision
    logits, feats = D(x, return_features=True)
    assert logits.shape == (4,) and feats.shape == (4, 32)
    assert MinibatchStd()(torch.randn(8, 5)).shape == (8, 6)
    steep = MLPDiscriminator(2, (16,))
    with torch.no_grad():
        steep.head.weight.mul_(100.0)  # far from 1-Lipschitz
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    assert gradient_penalty(steep, real, fake, torch.Generator().manual_seed(0)).item() > 1.0


# ---------------------------------------------------------------- training and evaluation end to end

def test_glo_on_points_reconstructs_better_over_epochs(tmp_path):
    cfg = ring(tmp_path, "glo.epochs=8", "glo.decay_every=100")
    result = train_glo(load_dataset(cfg.data), cfg)
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_glann_on_ring_trains_samples_points_and_counts_modes(tmp_path):
    cfg = ring(tmp_path, "glo.epochs=4", "imle.epochs=2")
    run = train(cfg)
    assert (run / "samples.png").stat().st_size > 1000  # a scatter plot
    sampler = Sampler.from_pretrained(run, device="cpu")
    a, b = sampler.sample(300, seed=3), sampler.sample(300, seed=3)
    assert a.shape == (300, 2) and torch.equal(a, b)
    z = sampler.reconstruct(load_dataset(cfg.data).images[:16], steps=20)
    assert z.shape == (16, cfg.model.nz)
    result = evaluate_run(run, num_samples=500)
    saved = json.loads((run / "eval.json").read_text())["mixture"]["metrics"]
    assert saved["num_modes"] == 8 and 0 <= saved["modes_covered"] <= 8
    assert result["metrics"]["high_quality_share"] == saved["high_quality_share"]


@pytest.mark.parametrize("extra", [(), ("gan.loss=wgan-gp", "gan.pack=2", "gan.minibatch_std=true")])
def test_gan_on_points_trains_with_finite_losses(tmp_path, extra):
    cfg = ring(tmp_path, "method=gan", "gan.epochs=2", *extra)
    result = train_gan(load_dataset(cfg.data), cfg)
    assert result.g_steps == 2 * (512 // 64)
    assert all(math.isfinite(v) for h in result.history for v in h.values())


def test_stacked_run_is_counted_over_channel_triples(tmp_path, monkeypatch):
    monkeypatch.setenv("GLANN_CACHE", str(tmp_path / "cache"))
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"out_dir={tmp_path}", "data.stack=3", "data.limit=128",
                                                       "glo.epochs=1", "imle.epochs=1"])
    data = load_dataset(cfg.data)
    assert data.shape == (3, 28, 28) and int(data.labels.max()) < 4 ** 3
    run = train(cfg)
    result = evaluate_run(run, num_samples=200)
    m = result["metrics"]
    assert m["num_modes"] == 64 and 1 <= m["modes_covered"] <= 64  # shapes: 4 classes per channel


def test_report_on_mixture_runs_has_mode_columns(tmp_path):
    from glann.report import write_report

    runs = [train(ring(tmp_path, "glo.epochs=2", "imle.epochs=1", "name=glann")),
            train(ring(tmp_path, "method=gan", "gan.epochs=1", "name=gan"))]
    out = write_report(runs, tmp_path / "report", features="domain", num_samples=300)
    md = (out / "report.md").read_text()
    assert "modes covered" in md and "high-quality share" in md and "point FD" in md
    assert "pixel FD" not in md and "features `domain`" not in md  # no images, no feature network
    assert "Data: ring8." in md
    assert (out / "report.html").is_file()

    grid = train(ring(tmp_path, "data.source=grid25", "glo.epochs=1", "imle.epochs=1", "name=grid"))
    with pytest.raises(ConfigError, match="different data .*grid25.*ring8"):  # not one table: scores differ per dataset
        write_report([*runs, grid], tmp_path / "mixed", features="domain", num_samples=300)


def test_points_from_glann_sample_are_scored_by_evaluate_images(tmp_path, capsys):
    from glann.cli import main

    run = train(ring(tmp_path, "glo.epochs=2", "imle.epochs=1"))
    npz = tmp_path / "points.npz"
    assert main(["sample", str(run), "-n", "300", "-o", str(npz)]) == 0  # .npz name: npz format
    assert main(["evaluate", "--images", str(npz), "--dataset", "ring8", "-o", str(tmp_path / "e.json")]) == 0
    saved = json.loads((tmp_path / "e.json").read_text())["mixture"]
    assert saved["metrics"]["num_modes"] == 8 and saved["protocol"]["num_generated"] == 300
    with pytest.raises(SystemExit, match="at least 1"):
        main(["sample", str(run), "-n", "0"])
    with pytest.raises(SystemExit, match="name it so"):
        main(["sample", str(run), "--format", "npz", "-o", str(tmp_path / "x.png")])
    with pytest.raises(DataError, match="float N x 2"):
        from glann.evaluate import evaluate_images
        evaluate_images(torch.zeros(5, 3), dataset="ring8")
