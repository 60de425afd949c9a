import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from glann import Sampler, train
from glann.cli import main
from glann.data import make_shapes
from glann.errors import CheckpointError, DataError
from glann.checkpoints import load_checkpoint, save_checkpoint
from glann.runs import Run

from conftest import ROOT


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from conftest import tiny_config

    cfg = tiny_config(tmp_path_factory.mktemp("runs"), "glo.epochs=6", "imle.epochs=3")
    return train(cfg)


def test_train_writes_the_run_directory(trained_run):
    for name in ["config.yaml", "model.safetensors", "metrics.jsonl", "samples.png",
                 "checkpoints/glo.pt", "checkpoints/imle.pt", "samples/glo_recon_epoch0005.png",
                 "samples/imle_samples_epoch0002.png"]:
        assert (trained_run / name).is_file(), name
    assert any((trained_run / "tb").iterdir())
    stages = [r["stage"] for r in Run(trained_run, None).read_metrics()]
    assert stages.count("glo") == 6 and stages.count("imle") == 3


def test_sampler_shapes_range_and_seed_determinism(trained_run):
    s = Sampler.from_pretrained(trained_run, device="cpu")
    x = s.sample(10, seed=3)
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, s.sample(10, seed=3))
    assert not torch.equal(x, s.sample(10, seed=4))


def test_interpolation_goes_from_a_to_b(trained_run):
    s = Sampler.from_pretrained(trained_run, device="cpu")
    a, b = s.latents(2, seed=0)
    frames = s.interpolate(a, b, steps=5)
    assert frames.shape == (5, 1, 28, 28)
    assert torch.allclose(frames[0], s.decode(a[None])[0], atol=1e-5)
    assert torch.allclose(frames[-1], s.decode(b[None])[0], atol=1e-5)


def test_reconstruct_fits_new_images_better_than_random_codes(trained_run):
    s = Sampler.from_pretrained(trained_run, device="cpu")
    images, _ = make_shapes(8, 28, seed=99)  # not the training images
    target = images.float() / 255
    z = s.reconstruct(images, steps=100)
    assert torch.allclose(z.norm(dim=1), torch.ones(8), atol=1e-5)
    err = (s.decode(z) - target).abs().mean()
    err_random = (s.sample(8, seed=0) - target).abs().mean()
    assert err < 0.7 * err_random


def test_reconstruct_refuses_the_wrong_shape(trained_run):
    s = Sampler.from_pretrained(trained_run, device="cpu")
    with pytest.raises(DataError, match="N x 1 x 28 x 28"):
        s.reconstruct(torch.zeros(2, 3, 32, 32))
    with pytest.raises(DataError, match="float images must lie in \\[0, 1\\], got \\[0, 255\\]"):
        s.reconstruct(torch.linspace(0, 255, 2 * 28 * 28).view(2, 1, 28, 28))  # 0-255 floats: a likely slip
    with pytest.raises(DataError, match="NaN"):
        s.reconstruct(torch.full((2, 1, 28, 28), float("nan")))


def test_cli_train_then_sample_end_to_end(tmp_path):
    cfg = ROOT / "configs" / "tiny.yaml"
    proc = subprocess.run([sys.executable, "-m", "glann", "train", str(cfg), f"out_dir={tmp_path}",
                           "glo.epochs=1", "imle.epochs=1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "tiny"
    assert str(run) in proc.stdout
    grid = tmp_path / "grid.png"
    assert main(["sample", str(run), "-n", "16", "--seed", "0", "-o", str(grid), "--device", "cpu"]) == 0
    assert Image.open(grid).size[0] > 28 * 3
    assert main(["sample", str(run), "-n", "5", "--out-dir", str(tmp_path / "pngs"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 5
    assert main(["sample", str(run), "-n", "7", "--format", "npz", "-o", str(tmp_path / "s.npz"), "--device", "cpu"]) == 0
    arr = np.load(tmp_path / "s.npz")["images"]
    assert arr.shape == (7, 28, 28, 1) and arr.dtype == np.uint8


def test_cli_bad_input_is_one_line_and_non_zero(tmp_path, capsys):
    assert main(["train", str(ROOT / "configs" / "tiny.yaml"), "glo.epoch=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glann: error:") and "glo.epoch" in err and "\n" not in err
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path, tiny, monkeypatch, schedule):
    sched = (f"glo.schedule={schedule}", f"imle.schedule={schedule}")
    full = train(tiny("glo.epochs=3", "imle.epochs=3", "name=full", *sched))
    # Stop after GLO epoch 1, then again after IMLE epoch 0 (as a spent budget stops a stage, with
    # its checkpoint), resuming each time with the same config.
    part_cfg = tiny("glo.epochs=3", "imle.epochs=3", "name=part", *sched)
    run = Run.create(part_cfg)
    from glann.data import load_dataset
    from glann.glo import train_glo
    from glann.imle import train_imle
    from glann.loop import Budget

    real_end = Budget.end_epoch
    data = load_dataset(part_cfg.data, seed=part_cfg.seed)
    with monkeypatch.context() as mp:
        mp.setattr(Budget, "end_epoch", lambda self, stage="", epoch=0, epochs=0: real_end(self) or epoch == 1)
        train_glo(data, part_cfg, run)
    glo = train_glo(data, part_cfg, run)
    with monkeypatch.context() as mp:
        mp.setattr(Budget, "end_epoch", lambda self, stage="", epoch=0, epochs=0: real_end(self) or epoch == 0)
        train_imle(glo.codes, part_cfg, run, codes_epoch=glo.epochs_done)
    run.close()
    part = train(part_cfg, resume=True)
    a = load_checkpoint(full / "checkpoints" / "imle.pt")
    b = load_checkpoint(part / "checkpoints" / "imle.pt")
    for k in a["mapper"]:
        assert torch.equal(a["mapper"][k], b["mapper"][k]), k
    ga, gb = load_checkpoint(full / "checkpoints" / "glo.pt"), load_checkpoint(part / "checkpoints" / "glo.pt")
    assert torch.equal(ga["codes"]["weight"], gb["codes"]["weight"])
    sa, sb = Sampler.from_pretrained(full, "cpu"), Sampler.from_pretrained(part, "cpu")
    assert torch.equal(sa.sample(8, seed=0), sb.sample(8, seed=0))


def test_the_epoch_bar_counts_every_epoch_run_and_shows_the_budget_not_the_epoch_cap():
    from glann.loop import Budget, epoch_loop

    ran = []
    for epoch, bar in epoch_loop("GLO", 2, 200, Budget(100.0, {})):  # resumed at epoch 2, a time budget
        ran.append(epoch)
        if epoch == 6:  # the stage breaks out after its budget's last epoch
            break
    assert ran == [2, 3, 4, 5, 6] and bar.n == 7  # the last epoch counted too (it used to read one short)
    assert bar.total is None and "max_seconds=100" in bar.desc  # no ETA for 200 epochs the budget never reaches
    for _, bar in epoch_loop("IMLE", 0, 3, Budget(None, {})):
        pass
    assert bar.n == bar.total == 3 and bar.desc == "IMLE"  # no budget: epochs are the whole story
    spent = Budget(1.0, {"seconds": torch.tensor(5.0)})
    assert list(epoch_loop("GAN", 0, 3, spent)) == []  # a resumed run whose budget is spent trains nothing


def test_a_new_run_refuses_to_overwrite_an_existing_one(trained_run):
    from glann.config import config_from_dict
    from omegaconf import OmegaConf

    cfg = config_from_dict(OmegaConf.to_container(OmegaConf.load(trained_run / "config.yaml")))
    with pytest.raises(CheckpointError, match="--resume"):
        train(cfg, run_dir=trained_run)


def test_sampling_a_run_whose_imle_never_finished_says_so(tmp_path, tiny):
    cfg = tiny("name=half")
    run = Run.create(cfg)
    from glann.data import load_dataset
    from glann.glo import train_glo

    train_glo(load_dataset(cfg.data, seed=0), tiny("glo.epochs=1", "name=half"), run)
    with pytest.raises(CheckpointError, match="IMLE stage never finished.*--resume"):
        Sampler.from_pretrained(run.path)


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_checkpoint_with_a_pickle_payload_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "x": _Payload()}, bad)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(bad)
    assert not (tmp_path / "PWNED").exists()


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def fail(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*c.pt \(No space left on device\).*intact"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_resume_with_overrides_trains_on_and_records_them(tmp_path, capsys):
    import json

    from glann.config import load_config

    tiny = str(ROOT / "configs" / "tiny.yaml")
    # The step schedule: a rate given on resume then holds as given (a cosine would anneal it).
    assert main(["train", tiny, f"out_dir={tmp_path}", "glo.epochs=1", "imle.epochs=1", "glo.schedule=step"]) == 0
    run = tmp_path / "tiny"
    # Lengthen the run from the command line; the file's other keys stay those saved with the run.
    assert main(["train", "--resume", "--run-dir", str(run), "glo.epochs=2", "imle.epochs=2"]) == 0
    assert "resuming" in capsys.readouterr().err
    steps = [(r["stage"], r["step"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert steps == [("glo", 0), ("imle", 0), ("glo", 1), ("imle", 0), ("imle", 1)]  # IMLE again: new codes
    assert (run / "checkpoints" / "imle.pt.stale").is_file()
    saved = load_config(run / "config.yaml")
    assert (saved.glo.epochs, saved.imle.epochs, saved.out_dir) == (2, 2, str(tmp_path))
    # A lower learning rate after a NaN is the advice the NaN error gives: it must take effect.
    assert main(["train", "--resume", "--run-dir", str(run), "glo.epochs=3", "glo.lr_generator=0.0001"]) == 0
    glo = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["stage"] == "glo"]
    assert glo[-1]["step"] == 2 and glo[-1]["lr_generator"] == pytest.approx(1e-4)
    # Keys the checkpoints were made with cannot change; config.yaml stays as it was.
    before = (run / "config.yaml").read_text()
    assert main(["train", "--resume", "--run-dir", str(run), "model.nz=8", "seed=3"]) == 2
    err = capsys.readouterr().err
    assert "--resume cannot change" in err and "model.nz" in err and "seed" in err
    assert main(["train", "--resume", "--run-dir", str(run), "glo.epochs=1"]) == 2  # 3 trained
    assert "glo.epochs=1 is below the 3 epochs this run has trained" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == before


def test_imle_checkpoint_of_older_codes_is_retired_and_kept(tmp_path, tiny):
    cfg = tiny("glo.epochs=1", "imle.epochs=1")
    run = Run.create(cfg)
    mapper = torch.nn.Linear(2, 2)
    run.save_stage("imle", 0, {"mapper": mapper}, torch.Generator(), extra={"codes_epoch": torch.tensor(1)})
    assert not run.retire_stage("imle", "codes_epoch", 1)  # same codes: resume it
    assert run.retire_stage("imle", "codes_epoch", 2)  # GLO went on since: start again
    assert not run.checkpoint_path("imle").exists() and (run.path / "checkpoints" / "imle.pt.stale").is_file()
    run.close()
