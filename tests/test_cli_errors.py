"""Bad input from a new user's walk through the CLI and API: every case is one line naming the
problem and the fix, with a non-zero exit; never a traceback, never silently wrong output."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from glann import Sampler, load_config, train
from glann.cli import main
from glann.errors import CheckpointError, ConfigError, DataError, ResourceError

from conftest import ROOT

TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import tiny_config

    return train(tiny_config(tmp_path_factory.mktemp("runs"), "glo.epochs=1", "imle.epochs=1"))


def _one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("glann: error:") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("override, needle", [
    ("glo.lr_generator=-1", "glo.lr_generator must be a positive learning rate"),
    ("imle.lr=nan", "imle.lr must be a positive learning rate"),
    ("glo.beta1=1.5", "glo.beta1 must be in [0, 1)"),
    ("glo.decay_every=0", "glo.decay_every must be >= 1"),
    ("model.ngf=0", "model.ngf must be positive"),
    ("model.fc_dim=0", "model.fc_dim must be positive"),  # used to train a model whose samples were all equal
    ("grid_size=0", "grid_size must be >= 1"),
    ("glo.epochs=-1", "glo.epochs must be >= 0"),
    ("imle.code_noise=-0.1", "imle.code_noise must be >= 0"),
    ("device=mps", "device 'mps' is not supported"),
])
def test_config_values_torch_would_choke_on_are_config_errors(override, needle, tmp_path, capsys):
    _one_line_error(capsys, main(["train", TINY, f"out_dir={tmp_path}", override]), needle)


def test_overrides_after_an_option_are_still_overrides(tmp_path, capsys):
    assert main(["train", TINY, "--run-dir", str(tmp_path / "r"), "glo.epochs=0", "imle.epochs=0",
                 "sample_every=1"]) == 0
    assert main(["train", TINY, "--resume", f"out_dir={tmp_path}", "--run-dir", str(tmp_path / "r"),
                 "glo.epochs=1"]) == 0
    assert load_config(tmp_path / "r" / "config.yaml").glo.epochs == 1


def test_unwritable_outputs_are_one_line_errors(run, tmp_path, capsys):
    _one_line_error(capsys, main(["sample", str(run), "-o", "/proc/nope/s.png"]), "/proc/nope")
    (tmp_path / "file.png").write_bytes(b"")
    _one_line_error(capsys, main(["report", str(run), "-o", str(tmp_path / "file.png"), "--features", "basic",
                                  "--num-samples", "16"]), "file.png")
    _one_line_error(capsys, main(["train", TINY, f"out_dir={tmp_path / 'file.png'}"]), "file.png")


def test_sample_refuses_clashing_outputs_and_a_used_out_dir(run, tmp_path, capsys):
    with pytest.raises(SystemExit, match="give one of them"):
        main(["sample", str(run), "--out-dir", str(tmp_path / "d"), "-o", str(tmp_path / "x.png")])
    assert main(["sample", str(run), "-n", "3", "--out-dir", str(tmp_path / "d")]) == 0
    with pytest.raises(SystemExit, match="already holds sample PNGs"):  # 3 new files would mix with the old
        main(["sample", str(run), "-n", "2", "--out-dir", str(tmp_path / "d")])


def test_sample_refuses_more_than_memory_holds_before_allocating(run, capsys):
    _one_line_error(capsys, main(["sample", str(run), "-n", str(10 ** 10), "--format", "npz"]), "GiB is free")
    with pytest.raises(ResourceError, match="GiB is free"):  # the API checks too, not only the CLI
        Sampler.from_pretrained(run, device="cpu").sample(10 ** 10)


def test_evaluate_and_report_refuse_sample_counts_that_cannot_score(run, tmp_path):
    with pytest.raises(SystemExit, match="--num-samples must be at least 2"):
        main(["evaluate", str(run), "--num-samples", "0"])
    with pytest.raises(SystemExit, match="--recon-images must be >= 0"):
        main(["evaluate", str(run), "--recon-images", "-3"])
    with pytest.raises(SystemExit, match="--num-samples must be at least 2"):
        main(["report", str(run), "--num-samples", "0", "-o", str(tmp_path / "r")])


def test_broken_saved_config_is_named(run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "config.yaml").write_text("glo: [unclosed\n")
    _one_line_error(capsys, main(["sample", str(broken)]), "config.yaml is not valid YAML")


def test_paths_of_the_wrong_kind_say_so(run, tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(ROOT / "configs")
    with pytest.raises(CheckpointError, match="is a file; pass its run directory"):
        Sampler.from_pretrained(run / "config.yaml")
    with pytest.raises(CheckpointError, match=f"not a run directory.*runs in it: {run.name}"):
        Sampler.from_pretrained(run.parent)
    with pytest.raises(DataError, match="unknown data.source 'fashion-mnist'; use one of fashion_mnist"):
        from glann.config import DataConfig
        from glann.data import load_dataset

        load_dataset(DataConfig(source="fashion-mnist"))


def test_python_api_takes_paths_and_refuses_bad_arguments_clearly(run, tmp_path):
    assert train(TINY, overrides=[f"out_dir={tmp_path}", "glo.epochs=1", "imle.epochs=1"]).is_dir()
    with pytest.raises(ConfigError, match="list of key=value strings"):
        load_config(TINY, "glo.epochs=1")
    s = Sampler.from_pretrained(run, device="cpu")
    with pytest.raises(ValueError, match="whole number"):
        s.sample(2.5)
    with pytest.raises(ValueError, match=".png or .jpg"):
        s.save_grid(s.sample(2, seed=0), tmp_path / "x.txt")
    with pytest.raises(DataError, match=f"n x {s.generator.nz}"):
        s.decode(torch.zeros(2, s.generator.nz + 1))
    with pytest.raises(DataError, match="two latents"):
        s.interpolate(torch.zeros(3), torch.zeros(3))
    z = s.reconstruct(np.zeros((2, 1, 28, 28), np.uint8), steps=2)  # numpy arrays are taken as they are
    assert z.shape == (2, s.generator.nz)


def test_offline_flag_reads_like_a_switch(monkeypatch):
    from glann.data import offline

    for value, expect in [("1", True), ("yes", True), ("0", False), ("false", False), ("", False)]:
        monkeypatch.setenv("GLANN_OFFLINE", value)
        assert offline() is expect


def test_importing_the_cli_does_not_load_torch():
    # Ctrl-C during start-up now reaches the CLI's handler instead of printing torch's import traceback.
    code = "import sys, glann.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_evaluate_run_writes_a_copy_where_asked(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLANN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "copy.json"
    assert main(["evaluate", str(run), "--num-samples", "64", "--recon-images", "0", "--against", "train",
                 "-o", str(out), "--device", "cpu"]) == 0  # -o used to be ignored for a run
    assert out.is_file() and (run / "eval.json").is_file()
    assert f"wrote {out}" in capsys.readouterr().out


def test_report_takes_a_runs_training_time_from_its_checkpoints(tmp_path):
    import time

    from glann.report import summarise_run
    from conftest import tiny_config

    t0 = time.perf_counter()
    run_dir = train(tiny_config(tmp_path, "glo.epochs=2", "imle.epochs=1"))
    elapsed = time.perf_counter() - t0
    seconds = summarise_run(run_dir, lambda d: {})["metrics"]["train_seconds"]
    assert 0 < seconds < elapsed  # training inside epochs, first epoch included; set-up and exports not
