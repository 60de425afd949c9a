"""Property-based tests: the config loader, the data readers and the k-NN on random input.

Bounded example counts keep them to seconds in CI; HYPOTHESIS_PROFILE=deep runs more.
"""
import os

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from glann import knn  # noqa: E402
from glann.config import GlannConfig, load_config  # noqa: E402
from glann.data import array_to_images, read_idx  # noqa: E402
from glann.errors import ConfigError, DataError  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("deep", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

KEYS = ["seed", "name", "glo.epochs", "glo.lr_codes", "glo.loss", "imle.samples_per_point", "data.limit",
        "data.image_size", "model.mapper_hidden", "imle.knn_backend", "data.channels", "device", "glo.epoch",
        "nope", "model", "glo", "data.source", "perf.amp", "perf.channels_last", "perf.fused_adam", "perf"]
VALUES = st.one_of(st.integers(-5, 10**6).map(str), st.floats(allow_nan=True).map(str),
                   st.sampled_from(["lap1", "vgg", "true", "null", "auto", "bf16", "[1,2]", "[]", "{}", "abc", "",
                                    "'x'", "${oops}"]),
                   st.text(max_size=12))


@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_config_overrides_give_a_config_or_a_config_error(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as exc:
        assert "\n" not in str(exc).strip()
    else:
        assert isinstance(cfg, GlannConfig)


def _read_idx_bytes(tmp_path_factory, blob):
    """read_idx on `blob`: the array, or None after a DataError (any other exception fails)."""
    f = tmp_path_factory.mktemp("idx") / "x.idx"
    f.write_bytes(blob)
    try:
        return read_idx(f)
    except DataError:
        return None


@given(st.binary(max_size=2000))
def test_idx_reader_on_random_bytes(tmp_path_factory, blob):
    arr = _read_idx_bytes(tmp_path_factory, blob)
    assert arr is None or arr.dtype == np.uint8


@given(st.binary(min_size=4, max_size=64).map(lambda b: bytes([0, 0, 8, 3]) + b))
def test_idx_reader_on_random_payloads_behind_a_valid_magic(tmp_path_factory, blob):
    arr = _read_idx_bytes(tmp_path_factory, blob)
    assert arr is None or arr.ndim == 3


@given(st.binary(max_size=3000))
def test_array_loader_on_random_bytes(tmp_path_factory, blob):
    from glann.config import DataConfig
    from glann.data import load_dataset

    f = tmp_path_factory.mktemp("arr") / "x.npy"
    f.write_bytes(blob)
    with pytest.raises(DataError):
        load_dataset(DataConfig(source="array", path=str(f)))


@given(st.sampled_from([(5, 28, 28), (2, 28, 28, 1), (3, 1, 32, 32), (1, 64, 64, 3), (4, 7), (2, 3, 4, 5, 6)]),
       st.sampled_from([np.uint8, np.float32, np.int16, np.float64]))
def test_array_to_images_shapes_and_dtypes(shape, dtype):
    arr = np.zeros(shape, dtype=dtype)
    try:
        out = array_to_images(arr)
    except DataError:
        assert len(shape) not in (3, 4) or dtype == np.int16
        return
    assert out.dtype == torch.uint8 and out.ndim == 4 and out.shape[1] in (1, 3)


@given(st.integers(1, 80), st.integers(1, 120), st.integers(1, 70), st.integers(1, 4),
       st.sampled_from([torch.float32, torch.float64]), st.integers(1, 64), st.integers(1, 64),
       st.sampled_from(["torch"] + (["faiss"] if knn.faiss_module() else [])), st.integers(0, 2**31 - 1))
def test_knn_on_random_shapes_matches_brute_force(nq, nx, d, k, dtype, qb, xb, backend, seed):
    k = min(k, nx)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(nq, d, generator=g).to(dtype)
    x = torch.randn(nx, d, generator=g).to(dtype)
    dist, idx = knn.nearest(q, x, k=k, backend=backend, query_batch=qb,
                            **({"db_batch": xb} if backend == "torch" else {}))
    full = torch.cdist(q.double(), x.double()).pow(2)
    assert idx.shape == (nq, k) and ((idx >= 0) & (idx < nx)).all()
    assert torch.allclose(full.gather(1, idx), full.sort(1).values[:, :k], rtol=1e-4, atol=1e-4)
    assert torch.allclose(dist.double(), full.gather(1, idx), rtol=1e-4, atol=1e-4)
