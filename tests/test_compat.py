"""Runs written by earlier code still load, sample and resume the same (issue 13: the refactor of
the loops and of runs.py changed no format and no number).

tests/fixtures/run_v1 was written by the code before that refactor (tests/fixtures/make_run_v1.py,
run from that commit): a tiny GLANN run and a tiny GAN run after one epoch of each stage, and the
samples (seed 0) of each, as exported and after a resume to two epochs of each stage.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glann import Sampler, load_config, train
from glann.config import REMOVED_KEYS

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1"
LONGER = {"glann": ["glo.epochs=2", "imle.epochs=2"], "gan": ["gan.epochs=2"]}
# Other processors (and thread counts) round a few float operations differently; two epochs of
# training carry that to about 1e-5 here. A changed computation moves samples by far more.
ATOL = 1e-3


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "expected.safetensors"))


@pytest.mark.parametrize("method", ["glann", "gan"])
def test_an_old_export_loads_and_samples_as_it_did(method, expected):
    got = Sampler.from_pretrained(FIXTURE / method, device="cpu").sample(8, seed=0)
    torch.testing.assert_close(got, expected[f"{method}_samples"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["glann", "gan"])
def test_training_from_scratch_computes_what_it_did(method, expected, tmp_path):
    # Module init, code init (PCA), batch order and pool draws: the whole run from its seed.
    cfg = load_config(FIXTURE / method / "config.yaml", [f"out_dir={tmp_path}"])
    got = Sampler.from_pretrained(train(cfg), device="cpu").sample(8, seed=0)
    torch.testing.assert_close(got, expected[f"{method}_samples"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["glann", "gan"])
def test_an_old_run_resumes_to_the_same_model(method, expected, tmp_path):
    run = shutil.copytree(FIXTURE / method, tmp_path / method)
    out = train(run / "config.yaml", resume=True, run_dir=run, overrides=LONGER[method])
    got = Sampler.from_pretrained(out, device="cpu").sample(8, seed=0)
    torch.testing.assert_close(got, expected[f"{method}_resumed_samples"], atol=ATOL, rtol=0)
    assert not torch.allclose(got, expected[f"{method}_samples"], atol=ATOL)  # it did train on


@pytest.mark.parametrize("method", ["glann", "gan"])
def test_save_pretrained_is_the_mirror_of_from_pretrained(method, tmp_path):
    sampler = Sampler.from_pretrained(FIXTURE / method, device="cpu")
    out = sampler.save_pretrained(tmp_path / "exported")
    assert out == tmp_path / "exported" / "model.safetensors" and (tmp_path / "exported" / "config.yaml").is_file()
    again = Sampler.from_pretrained(tmp_path / "exported", device="cpu")
    assert torch.equal(again.sample(8, seed=3), sampler.sample(8, seed=3))
    assert (again.mapper is None) == (method == "gan")



def _with_removed_key(tmp_path: Path, value: float) -> Path:
    """A copy of the old GLANN run whose saved config holds glo.code_noise (a key added by a study and
    removed again) at this value."""
    run = shutil.copytree(FIXTURE / "glann", tmp_path / "glann")
    f = run / "config.yaml"
    f.write_text(f.read_text().replace("\nglo:\n", f"\nglo:\n  code_noise: {value}\n", 1))
    assert "code_noise: " + str(value) in f.read_text()
    return run


def test_a_run_saved_with_a_removed_key_at_its_off_value_loads_and_samples_as_it_did(expected, tmp_path):
    from glann.config import read_run_config

    run = _with_removed_key(tmp_path, 0.0)
    got = Sampler.from_pretrained(run, device="cpu").sample(8, seed=0)
    torch.testing.assert_close(got, expected["glann_samples"], atol=ATOL, rtol=0)
    # what a resume reads: the file again, with overrides on top
    assert read_run_config(run, LONGER["glann"]).glo.epochs == 2


def test_a_removed_key_at_another_value_is_refused_naming_the_file_and_the_commit(tmp_path):
    from glann.errors import ConfigError

    run = _with_removed_key(tmp_path, 0.1)
    f = run / "config.yaml"
    with pytest.raises(ConfigError, match=rf"{f}: glo.code_noise=0.1 is no longer supported .*956a209"):
        Sampler.from_pretrained(run, device="cpu")
    with pytest.raises(ConfigError, match=rf"{f}: glo.code_noise=0.1 is no longer supported"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"overrides: glo.code_noise is no longer supported .*956a209"):
        load_config(None, ["glo.code_noise=0.1"])


@pytest.mark.parametrize("key", sorted(REMOVED_KEYS))
def test_every_removed_key_is_dropped_at_its_off_value_and_refused_at_another(key):
    from glann.config import config_from_dict
    from glann.errors import ConfigError

    off, commit = REMOVED_KEYS[key]
    section, name = key.split(".")
    numeric = not isinstance(off, str)
    for value in (off, int(off)) if numeric else (off,):  # 0 in a hand-written YAML means 0.0
        raw = {section: {name: value}}
        assert config_from_dict(raw) == load_config() and raw == {section: {name: value}}  # input left as it was
    other = off + 0.1 if numeric else f"{off}_other"
    with pytest.raises(ConfigError, match=rf"saved config: {key}={other} is no longer supported .*{commit}"):
        config_from_dict({section: {name: other}})
