"""Class-conditional GLANN and GAN (imle.conditional, gan.conditional), the domain score, and
virtual batch norm (gan.virtual_batch_norm)."""
from __future__ import annotations

import pytest
import torch

from glann import Sampler, train
from glann.config import load_config
from glann.data import DEBIAN_DIR, load_dataset, mixture_spec
from glann.errors import ConfigError, DataError
from glann.imle import train_imle
from glann.imle_pool import match_codes, pool_labels
from glann.knn import nearest, nearest_within
from glann.nets import Generator, sphere

from conftest import ROOT, ring_config


pytestmark = pytest.mark.usefixtures("one_thread")


def ring(tmp_path, *overrides):
    """configs/ring8.yaml shrunk to seconds: 1,024 points, narrow nets; N(0, I) into the mapper (its
    mixture start is one mixture for all classes, which conditional IMLE refuses)."""
    return ring_config(tmp_path, "model.mapper_prior=gaussian", *overrides, points=1024, width=64)


def _nearest_centre(points: torch.Tensor, source: str = "ring8") -> torch.Tensor:
    centres, _ = mixture_spec(source)
    return torch.cdist(points.float(), centres.float()).argmin(1)


# ---------------------------------------------------------------- the conditional pool and search

def test_pool_labels_give_each_class_its_share_and_split_over_ranks():
    labels = pool_labels([10, 3, 7], 2.0, world=1)
    assert torch.bincount(labels).tolist() == [20, 6, 14]
    assert torch.equal(labels, labels.sort().values)  # in class order: rank r maps a contiguous part
    padded = pool_labels([10, 3, 7], 1.5, world=4)  # 15 + 5 + 11 = 31 -> 32
    assert len(padded) % 4 == 0 and torch.bincount(padded).tolist() == [16, 5, 11]
    many_ranks = pool_labels([3, 2], 1.0, world=8)  # more ranks than classes: 5 -> 8
    assert len(many_ranks) == 8 and torch.bincount(many_ranks).tolist() == [5, 3]


@pytest.mark.parametrize("k", [1, 3])
def test_search_within_classes_equals_brute_force_per_class(k):
    g = torch.Generator().manual_seed(0)
    q, db = torch.randn(300, 8, generator=g), torch.randn(500, 8, generator=g)
    ql, dl = torch.randint(0, 4, (300,), generator=g), torch.randint(0, 4, (500,), generator=g)
    dist, idx = nearest_within(q, ql, db, dl, k=k)
    assert bool((dl[idx] == ql[:, None]).all())  # never across classes
    for c in range(4):
        rows = (dl == c).nonzero()[:, 0]
        ref = torch.cdist(q[ql == c], db[rows]).pow(2).topk(k, largest=False)
        assert torch.equal(idx[ql == c], rows[ref.indices])
        assert torch.allclose(dist[ql == c], ref.values, atol=1e-4)
    with pytest.raises(ValueError, match="label 2: 1 database rows for k=3"):
        nearest_within(q[:5], torch.full((5,), 2), db[:4], torch.tensor([0, 1, 2, 3]), k=3)


@pytest.mark.parametrize("rs", [None, 0.3])
def test_conditional_matching_never_crosses_classes(tiny, rs):
    cfg = tiny(f"imle.rs_quantile={'null' if rs is None else rs}")
    g = torch.Generator().manual_seed(1)
    codes = sphere(torch.randn(200, 16, generator=g))
    labels = torch.randint(0, 5, (200,), generator=g)
    pool = pool_labels(torch.bincount(labels).tolist(), 1.0)
    samples = sphere(torch.randn(len(pool), 16, generator=g))
    _, match, _ = match_codes(codes, samples, cfg.imle, 200, labels, pool)
    assert torch.equal(pool[match], labels)
    if rs is None:  # plain IMLE: each code's match is its nearest sample of its own class
        for c in range(5):
            rows = (pool == c).nonzero()[:, 0]
            assert torch.equal(match[labels == c], rows[nearest(codes[labels == c], samples[rows])[1][:, 0]])


def test_the_pool_keeps_its_classes_apart_when_drawn_in_chunks(tiny, monkeypatch):
    """In train mode the mapper's batch norm takes each chunk's statistics; a chunk of one class
    would normalise its class embedding away. The pool is class-ordered, so it is mapped shuffled."""
    import glann.imle_pool as imle_pool
    from glann.nets import build_mapper

    cfg = tiny("imle.conditional=true", "model.class_counts=[64,64,64,64]")
    torch.manual_seed(0)
    T = build_mapper(cfg).train()
    pool = pool_labels(cfg.model.class_counts, 1.0)

    def class_spread() -> float:
        _, samples = imle_pool.draw_pool(T, len(pool), torch.Generator().manual_seed(3),
                                         torch.device("cpu"), labels=pool)
        means = torch.stack([samples[pool == c].mean(0) for c in range(4)])
        return float((means - means.mean(0)).norm(dim=1).mean())

    whole = class_spread()  # one chunk: statistics over every class
    monkeypatch.setattr(imle_pool, "SAMPLE_BATCH", 64)  # four chunks, as many as classes
    assert class_spread() > 0.5 * whole


def test_conditional_imle_needs_a_label_per_code(tiny):
    cfg = tiny("imle.conditional=true", "model.class_counts=[100,100]")
    with pytest.raises(DataError, match="one label per code"):
        train_imle(sphere(torch.randn(200, cfg.model.nz)), cfg)


# ---------------------------------------------------------------- end to end on ring8

def test_conditional_glann_samples_the_asked_classes(tmp_path):
    cfg = ring(tmp_path, "name=cond", "imle.conditional=true", "glo.epochs=15", "imle.epochs=15")
    run = train(cfg)
    s = Sampler.from_pretrained(run, device="cpu")
    counts = torch.bincount(load_dataset(cfg.data).labels).tolist()  # ring8's 1,024 points by component
    assert s.num_classes == 8 and s.cfg.model.class_counts == counts and sum(counts) == 1024
    for c in (0, 3, 7):
        share = float((_nearest_centre(s.sample(400, seed=c, labels=c)) == c).float().mean())
        assert share >= 0.9, f"class {c}: {share:.2f} of the samples asked for it lie at its centre"
    mixed = torch.tensor([0, 5] * 100)
    assert torch.equal(s.sample(200, seed=1, labels=mixed), s.sample(200, seed=1, labels=mixed))  # seeded
    assert (_nearest_centre(s.sample(200, seed=1, labels=mixed)) == mixed).float().mean() >= 0.9
    # No labels: classes in the training data's shares.
    free = torch.bincount(_nearest_centre(s.sample(2000, seed=2)), minlength=8).float() / 2000
    assert float(free.min()) > 0.07
    with pytest.raises(DataError, match=r"labels must lie in 0 \.\. 7"):
        s.sample(4, labels=8)
    with pytest.raises(DataError, match="3 labels for 4 samples"):
        s.sample(4, labels=[0, 1, 2])
    with pytest.raises(DataError, match="unknown class 'Trouser'; this run's classes are 0 .. 7"):
        s.class_index("Trouser")
    with pytest.raises(DataError, match="labels must be class numbers"):
        s.sample(2, labels=["Bag", "Coat"])
    from glann.cli import main
    import numpy as np

    assert main(["sample", str(run), "--class", "3", "-n", "200", "--format", "npz", "-o", str(tmp_path / "c3.npz")]) == 0
    points = torch.from_numpy(np.load(tmp_path / "c3.npz")["points"])
    assert (_nearest_centre(points) == 3).float().mean() >= 0.9


# gan.ema re-estimates its generator's batch-norm statistics through the same reference batch and
# classes (the ring's generator has batch norm only when asked for).
EMA = pytest.mark.parametrize("ema", [(), ("gan.ema=0.9", "model.batch_norm=true")], ids=["plain", "ema"])


@EMA
def test_conditional_gan_trains_and_follows_its_labels(tmp_path, ema):
    cfg = ring(tmp_path, "name=cgan", "method=gan", "gan.conditional=true", "gan.epochs=3", *ema)
    s = Sampler.from_pretrained(train(cfg), device="cpu")
    assert s.num_classes == 8
    a, b = s.sample(64, seed=0, labels=0), s.sample(64, seed=0, labels=4)
    assert not torch.allclose(a, b)  # same noise, another class: another sample
    assert s.generator.class_embed is not None


def test_an_unconditional_run_asked_for_a_class_says_so(tmp_path, capsys):
    from glann.cli import main

    run = train(ring(tmp_path, "name=plain", "glo.epochs=1", "imle.epochs=1"))
    s = Sampler.from_pretrained(run, device="cpu")
    assert s.num_classes == 0
    with pytest.raises(DataError, match="this run is unconditional"):
        s.sample(4, labels=1)
    capsys.readouterr()  # training's progress bars
    assert main(["sample", str(run), "--class", "3", "--format", "npz", "-o", str(tmp_path / "x.npz")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this run is unconditional" in err[0]


def test_conditional_training_needs_labels_and_pack_1(tmp_path):
    with pytest.raises(ConfigError, match="gan.conditional=true judges one sample per decision: set gan.pack=1"):
        ring(tmp_path, "method=gan", "gan.conditional=true", "gan.pack=2")
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    for i in range(8):
        Image.new("L", (28, 28), 30 * i).save(folder / f"{i}.png")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"out_dir={tmp_path}", "data.source=folder",
                                                       f"data.path={folder}", "imle.conditional=true"])
    with pytest.raises(ConfigError, match="imle.conditional=true needs class labels.*set imle.conditional=false"):
        train(cfg)


def test_class_names_and_numbers_both_name_a_class(tiny):
    s = object.__new__(Sampler)  # class_index reads the config only
    s.cfg = tiny("data.source=fashion_mnist", "imle.conditional=true", f"model.class_counts=[{','.join(['6000'] * 10)}]")
    assert s.class_index("Trouser") == 1 and s.class_index("ankle boot") == 9 and s.class_index("3") == 3
    with pytest.raises(DataError, match="class 12 is out of range; this run has classes 0 .. 9"):
        s.class_index(12)


def test_a_switch_of_the_other_method_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="gan.conditional does nothing for method=glann.*imle.conditional=true"):
        ring(tmp_path, "gan.conditional=true")
    with pytest.raises(ConfigError, match="imle.conditional does nothing for method=gan.*gan.conditional=true"):
        ring(tmp_path, "method=gan", "imle.conditional=true")


def test_a_resumed_conditional_run_must_find_its_classes(tmp_path):
    from glann.data import Dataset
    from glann.pipeline import with_class_counts

    cfg = ring(tmp_path, "imle.conditional=true", "model.class_counts=[5,5]")
    with pytest.raises(ConfigError, match=r"trained on 2 classes of \[5, 5\] images and the data now has \[4, 6\]"):
        with_class_counts(cfg, Dataset(torch.zeros(10, 2), torch.tensor([0] * 4 + [1] * 6), "ring8"))
    with pytest.raises(ConfigError, match="class 1 has no training images"):
        with_class_counts(ring(tmp_path, "imle.conditional=true"), Dataset(torch.zeros(3, 2), torch.tensor([0, 2, 2]), "ring8"))


def test_conditional_run_resumes_on_the_same_classes(tmp_path):
    cfg = ring(tmp_path, "name=res", "imle.conditional=true", "glo.epochs=1", "imle.epochs=1")
    run = train(cfg)
    again = train(cfg, resume=True, run_dir=run, overrides=["imle.epochs=2"])
    counts = torch.bincount(load_dataset(cfg.data).labels).tolist()
    assert Sampler.from_pretrained(again, device="cpu").cfg.model.class_counts == counts


# ---------------------------------------------------------------- the domain score

def test_domain_score_orders_confident_spread_above_blurred_above_constant():
    from glann.evaluate.metrics import domain_score

    k, n = 10, 1000
    labels = torch.arange(n) % k
    sharp = torch.nn.functional.one_hot(labels, k).double() * 0.98 + 0.002
    blurred = torch.softmax(torch.randn(n, k, generator=torch.Generator().manual_seed(0)), 1) * 0.5 + sharp * 0.5
    constant = sharp[:1].expand(n, k)
    scores = [domain_score(p)[0] for p in (sharp, blurred, constant)]
    assert scores[0] > scores[1] > scores[2] and abs(scores[2] - 1.0) < 1e-6 and scores[0] <= k


@pytest.mark.skipif(not (DEBIAN_DIR / "fashion-mnist").is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_domain_score_orders_real_above_blurred_above_one_repeated_image():
    """On real Fashion-MNIST test images with the shipped classifier (the issue's sanity ordering)."""
    from torchvision.transforms.functional import gaussian_blur

    from glann.config import DataConfig
    from glann.data import load_dataset
    from glann.evaluate.classifier import domain_classifier
    from glann.evaluate.metrics import domain_score

    train_set = load_dataset(DataConfig(download=False))
    test = load_dataset(DataConfig(split="test", download=False, limit=2000))
    clf = domain_classifier(train_set, None).model
    real = test.images
    blurred = gaussian_blur(real.float(), kernel_size=9, sigma=3.0).round().to(torch.uint8)
    repeated = real[:1].expand_as(real).contiguous()
    scores = [domain_score(clf.predict_proba(x))[0] for x in (real, blurred, repeated)]
    assert scores[0] > scores[1] > scores[2], scores


# ---------------------------------------------------------------- virtual batch norm

def test_virtual_batch_norm_normalises_with_the_reference_batch():
    """A batch of one repeated noise vector: plain batch norm (train mode) maps every such batch to
    the same output (its own statistics cancel the input); with the reference batch beside it, the
    output follows the noise."""
    from glann.gan import _fake

    torch.manual_seed(0)
    G = Generator(nz=8, image_size=28, channels=1, ngf=8, fc_dim=32).train()
    ref = torch.randn(16, 8)
    a, b = torch.randn(1, 8).expand(4, 8), torch.randn(1, 8).expand(4, 8)

    class S:  # the two fields _fake reads from the GAN's state
        def __init__(self, ref_noise):
            self.G, self.ref_noise, self.ref_labels = G, ref_noise, None

    plain, virtual = S(None), S(ref)
    assert (_fake(plain, a, None) - _fake(plain, b, None)).abs().max() < 1e-3  # float noise of a zero variance
    assert (_fake(virtual, a, None) - _fake(virtual, b, None)).abs().max() > 0.05
    both = G(torch.cat([ref, a]))[16:]
    assert torch.allclose(_fake(virtual, a, None), both, atol=1e-6)


@EMA
def test_gan_trains_with_virtual_batch_norm(tmp_path, ema):
    cfg = ring(tmp_path, "name=vbn", "method=gan", "model.batch_norm=true", "gan.virtual_batch_norm=true", "gan.epochs=2",
               *ema)
    s = Sampler.from_pretrained(train(cfg), device="cpu")
    assert torch.isfinite(s.sample(64, seed=0)).all()
    with pytest.raises(ConfigError, match="virtual_batch_norm=true .* set model.batch_norm=true"):
        ring(tmp_path, "method=gan", "gan.virtual_batch_norm=true", "model.batch_norm=false")


# ---------------------------------------------------------------- evaluation of a conditional run

class _ShapesSampler(Sampler):
    """A stand-in conditional generator on the four shape classes: asked for class c it returns
    real test images of class c + `shift` (mod 4), so the scores' expected values are known."""

    def __init__(self, images, labels, cfg, shift):
        self.images, self.labels, self.cfg, self.shift, self.device = images, labels, cfg, shift, torch.device("cpu")

    def sample(self, n, seed=None, batch_size=1024, labels=None):
        g = torch.Generator().manual_seed(seed or 0)
        pool = torch.arange(len(self.images)) if labels is None else (self.labels == (int(labels) + self.shift) % 4).nonzero()[:, 0]
        return self.images[pool[torch.randint(len(pool), (n,), generator=g)]].float() / 255


def test_class_accuracy_and_per_class_fd_of_a_conditional_run(tiny, monkeypatch, tmp_path):
    from glann.data import Dataset, make_shapes
    from glann.evaluate import evaluate, train_classifier

    monkeypatch.setenv("GLANN_CACHE", str(tmp_path / "cache"))
    tr, ytr = make_shapes(768, 28, seed=0)
    te, yte = make_shapes(512, 28, seed=1)
    clf = train_classifier(tr, ytr, epochs=2, batch_size=32, lr=3e-3, progress=False)
    cfg = tiny("imle.conditional=true", "model.class_counts=[192,192,192,192]")
    test = Dataset(te, yte, "shapes")
    right = evaluate(_ShapesSampler(te, yte, cfg, 0), test, "domain", classifier=clf, num_samples=400,
                     kid_subsets=5)["metrics"]
    wrong = evaluate(_ShapesSampler(te, yte, cfg, 1), test, "domain", classifier=clf, num_samples=400,
                     kid_subsets=5)["metrics"]
    assert right["class_accuracy"] > 0.8 and wrong["class_accuracy"] < 0.2
    assert len(right["class_fd_per_class"]) == 4 and right["samples_per_class"] == 100
    assert right["class_fd_mean"] < 0.5 * wrong["class_fd_mean"]
    assert right["fd"] == pytest.approx(wrong["fd"], rel=0.5)  # the unconditional draw is the same data
