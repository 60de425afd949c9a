"""Faults a long run meets: kills, full disks, NaNs, broken files, concurrent trainers."""
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from glann.config import DataConfig
from glann.data import load_dataset
from glann.errors import CheckpointError, DataError, TrainingError
from glann.glo import train_glo
from glann.checkpoints import load_checkpoint
from glann.runs import Run

from conftest import ROOT

TRAIN = [sys.executable, "-m", "glann", "train", str(ROOT / "configs" / "tiny.yaml")]
KILL_ARGS = ["glo.epochs=6", "imle.epochs=6", "data.limit=512"]


def _env():
    return {**os.environ, "GLANN_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _last_logged(run_dir, stage):
    f = run_dir / "metrics.jsonl"
    steps = []
    if f.is_file():
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r["stage"] == stage:
                steps.append(r["step"])
    return max(steps, default=-1)


def _all_checkpoints_load(run_dir):
    for f in (run_dir / "checkpoints").glob("*.pt"):
        load_checkpoint(f)  # raises CheckpointError on a torn file


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_uninterrupted(tmp_path):
    # The reference runs in a subprocess too: the same thread count, hence the same float reductions.
    done = subprocess.run(TRAIN + [f"out_dir={tmp_path / 'ref'}", *KILL_ARGS], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ref = tmp_path / "ref" / "tiny"
    run_dir = tmp_path / "killed" / "tiny"
    rng = random.Random(0)
    args = TRAIN + [f"out_dir={tmp_path / 'killed'}", *KILL_ARGS]
    kills = 0
    for attempt in range(6):
        cmd = args + (["--resume"] if attempt else [])
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait until this attempt has logged an epoch, then kill at a random moment after it.
        metrics = run_dir / "metrics.jsonl"
        before = metrics.stat().st_size if metrics.is_file() else 0
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and \
                (metrics.stat().st_size if metrics.is_file() else 0) <= before:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        _all_checkpoints_load(run_dir)
        for stage in ("glo", "imle"):
            ck = run_dir / "checkpoints" / f"{stage}.pt"
            if ck.is_file():  # at most one checkpoint interval (one epoch) of work is lost
                assert load_checkpoint(ck)["epoch"] >= _last_logged(run_dir, stage) - 1
    proc = subprocess.run(args + ["--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert kills >= 1
    a, b = load_file(ref / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


KILL_IN_SAVE = r"""
import os, signal, sys, torch
import glann.runs as runs
real_save, calls = torch.save, [0]
def dying_save(obj, f, *a, **k):
    calls[0] += 1
    if calls[0] == 3:  # the third checkpoint: write half a file, then die mid-write
        open(f, "wb").write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
torch.save = dying_save
from glann.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_whole(tmp_path):
    args = ["train", str(ROOT / "configs" / "tiny.yaml"), f"out_dir={tmp_path}", "glo.epochs=4", "imle.epochs=1"]
    proc = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, *args], env=_env(), capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    run_dir = tmp_path / "tiny"
    assert load_checkpoint(run_dir / "checkpoints" / "glo.pt")["epoch"] == 1  # the 2nd save, intact
    assert list((run_dir / "checkpoints").glob(".*.tmp"))  # the torn temp file is there ...
    done = subprocess.run([sys.executable, "-m", "glann", *args, "--resume"], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(run_dir.rglob(".*.tmp"))  # ... and cleaned up on resume
    assert load_checkpoint(run_dir / "checkpoints" / "glo.pt")["epoch"] == 3


def test_disk_full_during_training_keeps_the_previous_checkpoint(tiny, monkeypatch):
    cfg = tiny("glo.epochs=3")
    run = Run.create(cfg)
    data = load_dataset(cfg.data, seed=0)
    train_glo(data, tiny("glo.epochs=1"), run)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*glo.pt.*No space left.*intact"):
        train_glo(data, cfg, run)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(run.checkpoint_path("glo"))["epoch"] == 0


def _nan_on_steps(monkeypatch, bad_steps):
    """Make the GLO loss NaN on the given global step numbers."""
    import glann.glo as glo_mod

    real = glo_mod.to_model
    counter = [0]

    def to_model(x):
        out = real(x)
        counter[0] += 1
        return out * float("nan") if counter[0] - 1 in bad_steps else out

    monkeypatch.setattr(glo_mod, "to_model", to_model)


def test_nan_stops_at_the_first_bad_step_and_names_it(tiny, monkeypatch):
    cfg = tiny("glo.epochs=2", "sample_every=100")
    _nan_on_steps(monkeypatch, {8 + 5})  # 8 steps per epoch: epoch 1, step 5
    run = Run.create(cfg)
    with pytest.raises(TrainingError, match=r"non-finite GLO loss at epoch 1, step 5; the last good checkpoint"):
        train_glo(load_dataset(cfg.data, seed=0), cfg, run)
    assert load_checkpoint(run.checkpoint_path("glo"))["epoch"] == 0


def test_skip_nonfinite_skips_and_counts_bad_batches(tiny, monkeypatch):
    cfg = tiny("glo.epochs=2", "skip_nonfinite=true", "sample_every=100")
    _nan_on_steps(monkeypatch, {1, 2, 9})
    run = Run.create(cfg)
    result = train_glo(load_dataset(cfg.data, seed=0), cfg, run)
    run.close()
    assert all(np.isfinite(result.losses))
    skipped = [r["skipped_batches"] for r in run.read_metrics() if r["stage"] == "glo"]
    assert skipped == [2, 1]
    assert torch.isfinite(result.codes).all()


def test_a_second_trainer_on_the_same_run_is_refused(tiny):
    cfg = tiny()
    first = Run.create(cfg)
    with pytest.raises(CheckpointError, match="being trained by another process"):
        Run.create(cfg, resume=True)
    first.close()
    Run.create(cfg, resume=True).close()  # free again once the first lets go


def test_cli_refuses_a_concurrent_train(tmp_path):
    args = TRAIN + [f"out_dir={tmp_path}", "glo.epochs=50"]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "tiny" / "metrics.jsonl").is_file():
            time.sleep(0.05)
        second = subprocess.run(TRAIN + [f"out_dir={tmp_path}", "--resume"], env=_env(), capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2 and "being trained by another process" in second.stderr
    finally:
        proc.kill()
        proc.wait()


def test_mixed_modes_and_sizes_in_a_folder(tmp_path):
    Image.fromarray(np.full((40, 30), 60000, np.uint16)).save(tmp_path / "deep16.png")
    Image.fromarray(np.full((20, 20, 4), 200, np.uint8), "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.full((50, 64), 100, np.uint8), "L").save(tmp_path / "grey.jpg")
    Image.fromarray(np.full((64, 32, 3), 30, np.uint8)).convert("P").save(tmp_path / "palette.gif")
    ds = load_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=32, channels=1))
    assert ds.images.shape == (4, 1, 32, 32)
    means = sorted(int(m) for m in ds.images.float().mean((1, 2, 3)).round())
    assert means[-1] == 233  # 60000 / 65535 of full scale, not clipped to 255
    assert 195 <= means[-2] <= 205 and 95 <= means[1] <= 105


def test_skip_bad_warns_and_counts(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(os.urandom(300))
    with pytest.raises(DataError, match="skip_bad"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=32, skip_bad=True))
    assert len(ds) == 1
    assert any("skipped 2 unreadable image(s) of 3" in str(w.message) for w in caught)


def test_labels_that_do_not_match_the_images_are_refused(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((5, 28, 28), np.uint8), labels=np.arange(4))
    with pytest.raises(DataError, match="4 labels for 5 images"):
        load_dataset(DataConfig(source="array", path=str(tmp_path / "a.npz")))


def test_checkpoints_get_the_usual_file_mode(tmp_path):
    from glann.checkpoints import save_checkpoint

    umask = os.umask(0o022)
    try:
        save_checkpoint({"epoch": 0}, tmp_path / "c.pt")
    finally:
        os.umask(umask)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644
