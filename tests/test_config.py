import pytest

from glann.config import GlannConfig, load_config
from glann.errors import ConfigError

from conftest import ROOT


def test_reference_config_is_the_reference_glann_configuration():
    cfg = load_config(ROOT / "configs" / "fashion_mnist_reference.yaml")
    assert (cfg.model.nz, cfg.model.noise_dim, cfg.glo.batch_size) == (64, 32, 128)
    assert (cfg.glo.lr_codes, cfg.glo.lr_generator, cfg.glo.decay_every) == (0.01, 0.001, 20)
    assert (cfg.glo.epochs, cfg.imle.epochs, cfg.imle.samples_per_point, cfg.imle.lr) == (200, 50, 2.0, 0.001)
    assert (cfg.glo.init, cfg.glo.code_steps, cfg.glo.schedule, cfg.imle.schedule, cfg.imle.sphere) == (
        "random", "shared", "step", "step", False)
    assert cfg.model.mapper_hidden == [128, 128]


def test_defaults_keep_the_reference_architecture():
    cfg = GlannConfig()
    assert (cfg.model.nz, cfg.model.noise_dim, cfg.glo.batch_size, cfg.model.mapper_hidden) == (64, 32, 128, [128, 128])
    assert (cfg.glo.init, cfg.glo.code_steps, cfg.glo.schedule) == ("pca", "row", "cosine")


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("compare_")),
                         ids=lambda p: p.name)  # compare_*.yaml are `glann compare` configs (tests/test_report.py)
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), GlannConfig)


def test_overrides_win_over_yaml():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["glo.epochs=7", "model.mapper_hidden=[4,5]", "data.limit=9"])
    assert cfg.glo.epochs == 7 and cfg.model.mapper_hidden == [4, 5] and cfg.data.limit == 9


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="glo.epoch"):
        load_config(None, ["glo.epoch=3"])


def test_unknown_key_in_yaml_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("imle:\n  sample_per_point: 3\n")
    with pytest.raises(ConfigError, match="sample_per_point"):
        load_config(f)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="glo.batch_size"):
        load_config(None, ["glo.batch_size=many"])


@pytest.mark.parametrize("bad", ["glo.loss=ssim", "data.image_size=30", "imle.knn_backend=annoy", "data.channels=2",
                                 "glo.vgg_levels=0", "glo.vgg_levels=6"])
def test_out_of_range_values_are_refused(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        load_config(None, [bad])


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["glo.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="whole config section.*e.g. glo.epochs=3"):
        load_config(None, ["glo=3"])
