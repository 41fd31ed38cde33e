"""IDX reader: round trips (raw and .gz) and clear errors naming the file."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from koopt.experiments.idx import DataError, IDXError, find_idx, read_idx, write_idx
from koopt.experiments.mnist import MNIST_FILES, load_mnist_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_raw_and_gz(tmp_path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    floats = rng.standard_normal((3, 4)).astype(np.float32)
    ints = rng.integers(-1000, 1000, size=(5,), dtype=np.int32)
    for name, arr in (("img", images), ("lab", labels), ("f", floats), ("i", ints)):
        path = write_idx(tmp_path / f"{name}{suffix}", arr)
        back = read_idx(path)
        assert back.dtype == arr.dtype and back.shape == arr.shape
        np.testing.assert_array_equal(back, arr)
    # the header is the standard one: magic 0x00000803 then big-endian sizes
    raw = (tmp_path / f"img{suffix}").read_bytes()
    if suffix:
        raw = gzip.decompress(raw)
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 7, 0, 0, 0, 28, 0, 0, 0, 28])
    assert read_idx(tmp_path / f"img{suffix}", ndim=3, dtype_code=0x08).shape == (7, 28, 28)


def test_bad_magic_names_the_file(tmp_path) -> None:
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x50\x4b\x03\x04" + bytes(100))  # a zip file, say
    with pytest.raises(IDXError) as exc:
        read_idx(bad)
    msg = str(exc.value)
    assert str(bad) in msg and "bad magic number 0x504B0304" in msg and "expected" in msg
    assert "\n" not in msg


def test_truncated_and_mismatched_files(tmp_path) -> None:
    p = write_idx(tmp_path / "x", np.zeros((4, 5), dtype=np.uint8))
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(IDXError, match=r"expected 20 data bytes for shape \(4, 5\), found 17"):
        read_idx(p)
    q = write_idx(tmp_path / "y", np.zeros((4,), dtype=np.uint8))
    with pytest.raises(IDXError, match="1 dimensions, expected 3"):
        read_idx(q, ndim=3)
    (tmp_path / "z.gz").write_bytes(b"not gzip at all")
    with pytest.raises(IDXError, match="z.gz"):
        read_idx(tmp_path / "z.gz")
    with pytest.raises(IDXError, match="too short"):
        (tmp_path / "e").write_bytes(b"")
        read_idx(tmp_path / "e")


def _fake_mnist(folder, n_train: int = 40, n_val: int = 12, gz: bool = False) -> None:
    rng = np.random.default_rng(1)
    sfx = ".gz" if gz else ""
    write_idx(folder / (MNIST_FILES["train_images"] + sfx),
              rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(folder / (MNIST_FILES["train_labels"] + sfx),
              rng.integers(0, 10, n_train, dtype=np.uint8))
    write_idx(folder / (MNIST_FILES["val_images"] + sfx),
              rng.integers(0, 256, (n_val, 28, 28), dtype=np.uint8))
    write_idx(folder / (MNIST_FILES["val_labels"] + sfx),
              rng.integers(0, 10, n_val, dtype=np.uint8))


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_folder(tmp_path, gz: bool) -> None:
    _fake_mnist(tmp_path, gz=gz)
    data = load_mnist_idx(tmp_path)
    assert data.x_train.shape == (40, 784) and data.x_val.shape == (12, 784)
    assert float(data.x_train.max()) <= 1.0 and data.y_train.dtype.is_floating_point is False


def test_missing_and_inconsistent_files(tmp_path) -> None:
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        find_idx(tmp_path, "train-images-idx3-ubyte")
    with pytest.raises(DataError, match="not a directory"):
        load_mnist_idx(tmp_path / "nope")
    _fake_mnist(tmp_path)
    write_idx(tmp_path / MNIST_FILES["val_labels"], np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataError, match="11 labels, expected 12"):
        load_mnist_idx(tmp_path)


@pytest.mark.parametrize("key, shape", [("train_images", (0, 28, 28)),
                                        ("val_images", (0, 28, 28)),
                                        ("train_images", (40, 0, 0))])
def test_no_image_data_names_the_file(tmp_path, key: str, shape: tuple) -> None:
    _fake_mnist(tmp_path)
    write_idx(tmp_path / MNIST_FILES[key], np.zeros(shape, dtype=np.uint8))
    if shape[0] == 0:  # the labels agree: 0 of them
        write_idx(tmp_path / MNIST_FILES[key.replace("images", "labels")],
                  np.zeros(0, dtype=np.uint8))
    with pytest.raises(DataError) as exc:
        load_mnist_idx(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / MNIST_FILES[key]) in msg and "no image data" in msg
    assert "\n" not in msg and "reshape" not in msg
