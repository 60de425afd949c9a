import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from glann.config import DataConfig
from glann.data import DEBIAN_DIR, load_dataset, make_shapes, read_idx
from glann.errors import DataError


def write_idx(path, arr, gz=False):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open(path, "wb") if gz else open(path, "wb")).write(data)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (20, 28, 28))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 20))
    return tmp_path, imgs


def test_idx_files_load_with_labels(idx_dir):
    path, imgs = idx_dir
    ds = load_dataset(DataConfig(source="fashion_mnist", path=str(path), download=False))
    assert ds.images.shape == (20, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs.astype(np.uint8)))
    assert ds.labels.shape == (20,) and ds.labels.dtype == torch.int64


def test_limit_keeps_the_first_images(idx_dir):
    path, imgs = idx_dir
    ds = load_dataset(DataConfig(source="mnist", path=str(path), download=False, limit=5))
    assert len(ds) == 5 and torch.equal(ds.images[:, 0], torch.from_numpy(imgs[:5].astype(np.uint8)))


def test_truncated_idx_names_the_file(idx_dir, tmp_path):
    f = tmp_path / "t.idx"
    write_idx(f, np.zeros((4, 28, 28)))
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DataError, match="t.idx.*truncated"):
        read_idx(f)


def test_wrong_magic_names_the_file(tmp_path):
    f = tmp_path / "bad.idx"
    f.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DataError, match="bad.idx.*magic"):
        read_idx(f)


def test_missing_dataset_lists_the_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GLANN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("glann.data.DEBIAN_DIR", tmp_path / "nodebian")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*GLANN_DATA.*download"):
        load_dataset(DataConfig(source="fashion_mnist", download=False))


def test_an_explicit_data_path_without_the_files_is_refused_not_replaced(tmp_path):
    # It used to fall back to the installed copy without a word: another dataset than the one asked for.
    with pytest.raises(DataError, match=f"not found in data.path={tmp_path}"):
        load_dataset(DataConfig(source="fashion_mnist", path=str(tmp_path)))
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "f.png")))


@pytest.mark.skipif(not (DEBIAN_DIR / "fashion-mnist").is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_is_found():
    ds = load_dataset(DataConfig(source="fashion_mnist", download=False, split="test", limit=100))
    assert ds.images.shape == (100, 1, 28, 28) and ds.labels.max() <= 9


def test_folder_images_are_resized_and_cropped(tmp_path):
    for i, (w, h) in enumerate([(40, 30), (64, 64), (20, 50)]):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "grey.jpg")
    ds = load_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=32))
    assert ds.images.shape == (4, 3, 32, 32) and ds.labels is None
    assert int(ds.images[1].float().mean().round()) == 40


def test_corrupt_image_is_named(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=32))


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="no images"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=32))


def test_npz_and_npy_arrays(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(6))
    ds = load_dataset(DataConfig(source="array", path=str(tmp_path / "a.npz")))
    assert ds.images.shape == (6, 3, 32, 32) and torch.equal(ds.labels, torch.arange(6))
    assert torch.equal(ds.images.permute(0, 2, 3, 1), torch.from_numpy(x))
    np.save(tmp_path / "f.npy", (x[..., :1] / 255.0).astype(np.float32))
    ds = load_dataset(DataConfig(source="array", path=str(tmp_path / "f.npy")))
    assert ds.images.shape == (6, 1, 32, 32) and torch.equal(ds.images[:, 0], torch.from_numpy(x[..., 0]))


def test_pickled_array_file_is_refused(tmp_path):
    np.save(tmp_path / "p.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="p.npy"):
        load_dataset(DataConfig(source="array", path=str(tmp_path / "p.npy")))


def test_unsupported_size_and_channels_are_refused(tmp_path):
    np.save(tmp_path / "odd.npy", np.zeros((3, 30, 30), np.uint8))
    with pytest.raises(DataError, match="data.image_size"):
        load_dataset(DataConfig(source="array", path=str(tmp_path / "odd.npy")))
    np.save(tmp_path / "c4.npy", np.zeros((3, 4, 32, 32), np.uint8))
    with pytest.raises(DataError, match="4 channels"):
        load_dataset(DataConfig(source="array", path=str(tmp_path / "c4.npy")))
    np.save(tmp_path / "rgba.npy", np.zeros((3, 32, 32, 4), np.uint8))  # channels last, with alpha
    with pytest.raises(DataError, match="4 channels \\(RGBA\\?\\).*arr\\[..., :3\\]"):
        load_dataset(DataConfig(source="array", path=str(tmp_path / "rgba.npy"), image_size=32))


def test_label_count_is_checked_before_limit_cuts_both(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((100, 28, 28), np.uint8), labels=np.arange(50))
    for limit in (None, 40):  # with limit=40 both used to be cut to 40 and pass
        with pytest.raises(DataError, match="50 labels for 100 images"):
            load_dataset(DataConfig(source="array", path=str(tmp_path / "a.npz"), limit=limit))


def test_size_and_channel_conversion(tmp_path):
    np.save(tmp_path / "odd.npy", np.full((3, 30, 30, 3), 200, np.uint8))
    ds = load_dataset(DataConfig(source="array", path=str(tmp_path / "odd.npy"), image_size=28, channels=1))
    assert ds.images.shape == (3, 1, 28, 28) and int(ds.images.float().mean().round()) == 200


def test_shapes_are_deterministic_and_labelled():
    a, la = make_shapes(64, 28, seed=1)
    b, lb = make_shapes(64, 28, seed=1)
    assert torch.equal(a, b) and torch.equal(la, lb) and set(la.tolist()) == {0, 1, 2, 3}
    assert (a.flatten(1).float().mean(1) > 0).all()
