"""`glann evaluate` on a run and on image files, and the domain FD logged during training."""
from __future__ import annotations

import json

import numpy as np
import pytest

from glann import train
from glann.cli import main
from glann.data import Dataset, make_shapes
from glann.runs import Run


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLANN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fd_run(tmp_path_factory):
    """A tiny run that logs the domain FD every IMLE epoch (its classifier cached in its own dir)."""
    from conftest import tiny_config

    root = tmp_path_factory.mktemp("evalruns")
    mp = pytest.MonkeyPatch()
    mp.setenv("GLANN_CACHE", str(root / "cache"))
    try:
        cfg = tiny_config(root, "glo.epochs=2", "imle.epochs=2", "eval.every=1", "eval.num_samples=64")
        yield train(cfg)
    finally:
        mp.undo()


def test_training_logs_domain_fd_each_imle_epoch(fd_run):
    fds = [r["domain_fd"] for r in Run(fd_run, None).read_metrics() if r["stage"] == "imle"]
    assert len(fds) == 2 and all(isinstance(v, float) and v >= 0 for v in fds)


def test_cli_evaluate_run_prints_a_table_and_writes_eval_json(fd_run, capsys):
    rc = main(["evaluate", str(fd_run), "--num-samples", "64", "--against", "train", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "FD" in out and "classes covered" in out
    saved = json.loads((fd_run / "eval.json").read_text())["domain"]
    m, p = saved["metrics"], saved["protocol"]
    for key in ("fd", "kd_mean", "precision", "recall", "density", "coverage", "classes_covered",
                "mode_kl", "confident_share", "memorisation_ratio"):
        assert key in m, key
    assert p["num_generated"] == 64 and p["against"] == "train" and p["seed"] == 0 and "torch" in p["versions"]
    assert (fd_run / "eval_nearest.png").is_file()


def test_cli_evaluate_images_from_an_npz(tmp_path, monkeypatch, capsys):
    import glann.evaluate.suite as suite

    tr, ytr = make_shapes(512, 28, seed=0)
    te, yte = make_shapes(256, 28, seed=1)
    train_ds, test_ds = Dataset(tr, ytr, "shapes"), Dataset(te, yte, "shapes")
    # Stand-in for a real dataset: the CLI path is what is under test, not Fashion-MNIST.
    monkeypatch.setattr(suite, "reference_data", lambda data, against="test": (test_ds, train_ds, test_ds))
    gen, _ = make_shapes(128, 28, seed=2)
    np.savez(tmp_path / "gen.npz", images=gen.permute(0, 2, 3, 1).numpy())
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--images", str(tmp_path / "gen.npz"), "--dataset", "shapes", "--num-samples", "128",
               "-o", str(out), "--device", "cpu"])
    assert rc == 0 and json.loads(out.read_text())["domain"]["protocol"]["num_generated"] == 128
    assert "classes covered" in capsys.readouterr().out


def test_cli_evaluate_refuses_images_of_another_shape_than_the_dataset(tmp_path, monkeypatch, capsys):
    import glann.evaluate.suite as suite

    tr, ytr = make_shapes(64, 28, seed=0)
    ds = Dataset(tr, ytr, "shapes")
    monkeypatch.setattr(suite, "reference_data", lambda data, against="test": (ds, ds, ds))
    colour = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    np.savez(tmp_path / "rgb32.npz", images=colour)  # used to be turned into 28 px grey and scored
    rc = main(["evaluate", "--images", str(tmp_path / "rgb32.npz"), "--dataset", "shapes", "--device", "cpu"])
    assert rc == 2 and "images are 3x32x32 (C x H x W) but shapes is 1x28x28" in capsys.readouterr().err
    folder = tmp_path / "pngs"
    folder.mkdir()
    from PIL import Image

    Image.fromarray(colour[0]).save(folder / "0.png")
    rc = main(["evaluate", "--images", str(folder), "--dataset", "shapes", "--device", "cpu"])
    assert rc == 2 and "3x32x32" in capsys.readouterr().err


def test_cli_evaluate_without_labels_says_use_inception(tmp_path, monkeypatch, capsys):
    import glann.evaluate.suite as suite

    imgs, _ = make_shapes(64, 28, seed=0)
    unlabelled = Dataset(imgs, None, "folder")
    monkeypatch.setattr(suite, "reference_data", lambda data, against="test": (unlabelled, unlabelled, None))
    np.save(tmp_path / "gen.npy", imgs[:, 0].numpy())
    rc = main(["evaluate", "--images", str(tmp_path / "gen.npy"), "--num-samples", "64", "--device", "cpu"])
    assert rc == 2 and "inception" in capsys.readouterr().err
