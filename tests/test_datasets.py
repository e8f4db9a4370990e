"""The dataset loaders and the bundled subsets."""

import gzip

import numpy as np
import pytest

from pyro_go.datasets import (
    dynamic_binarize,
    load_binarized_mnist,
    load_mnist,
    load_mnist_idx,
    load_omniglot,
    minibatches,
    read_chardata,
    read_idx,
)


def test_bundled_mnist_subset():
    data = load_mnist()
    assert {k: v.shape for k, v in data.items()} == {
        "x_train": (1000, 784),
        "x_valid": (200, 784),
        "x_test": (200, 784),
    }
    assert data["x_train"].dtype == np.uint8 and data["x_train"].max() > 200


def test_bundled_omniglot_subset_is_rescaled_and_split():
    data = load_omniglot()
    assert data["x_train"].dtype == np.float32
    assert 0.0 <= data["x_train"].min() and data["x_train"].max() <= 1.0
    assert len(data["x_train"]) + len(data["x_valid"]) == 500 and len(data["x_test"]) == 100


def test_loaders_take_arrays_and_paths(tmp_path):
    arrays = {k: np.zeros((3, 784), np.uint8) for k in ("x_train", "x_valid", "x_test")}
    assert load_mnist(arrays)["x_valid"].shape == (3, 784)
    np.savez(tmp_path / "mnist.npz", **arrays)
    assert load_mnist(tmp_path / "mnist.npz")["x_test"].shape == (3, 784)
    with pytest.raises(KeyError, match="x_valid"):
        load_mnist({"x_train": arrays["x_train"], "x_test": arrays["x_test"]})
    with pytest.raises(ValueError, match="784"):
        load_mnist({k: np.zeros((3, 10)) for k in arrays})
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path / "missing.npz")


def test_dynamic_binarize_matches_intensities():
    rng = np.random.default_rng(0)
    images = np.full((4000, 784), 64, np.uint8)
    binary = dynamic_binarize(images, rng)
    assert set(np.unique(binary)) <= {0.0, 1.0}
    assert abs(binary.mean() - 64 / 255) < 0.002


def test_minibatches_cover_an_epoch():
    images = np.arange(10)[:, None].repeat(784, 1)
    batches = minibatches(images, 5, np.random.default_rng(0))
    seen = np.concatenate([next(batches)[:, 0], next(batches)[:, 0]])
    assert sorted(seen) == list(range(10))


# --- the standard public formats, on small files written here -----------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    return header + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()


def _write_idx(path, array, compress):
    data = _idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_mnist_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    train_labels = rng.integers(0, 10, 12, dtype=np.uint8)
    test_labels = rng.integers(0, 10, 5, dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", train, compress)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", train_labels, compress)
    # the other spelling of the download's names
    _write_idx(tmp_path / "t10k-images.idx3-ubyte", test, compress)
    _write_idx(tmp_path / "t10k-labels.idx1-ubyte", test_labels, compress)
    data = load_mnist(tmp_path, labels=True)
    flat = train.reshape(12, 784)
    # the last sixth of a training file that is not the full 60k is the validation set
    np.testing.assert_array_equal(data["x_train"], flat[:10])
    np.testing.assert_array_equal(data["x_valid"], flat[10:])
    np.testing.assert_array_equal(data["x_test"], test.reshape(5, 784))
    np.testing.assert_array_equal(data["y_train"], train_labels[:10])
    np.testing.assert_array_equal(data["y_valid"], train_labels[10:])
    np.testing.assert_array_equal(data["y_test"], test_labels)
    assert data["x_train"].dtype == np.uint8


def test_read_idx_big_endian_and_bad_files(tmp_path):
    values = np.arange(6, dtype=">i4").reshape(2, 3)
    (tmp_path / "a").write_bytes(_idx_bytes(values))
    out = read_idx(tmp_path / "a")
    np.testing.assert_array_equal(out, [[0, 1, 2], [3, 4, 5]])
    assert out.dtype == np.int32 and out.dtype.isnative
    (tmp_path / "short").write_bytes(_idx_bytes(values)[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(tmp_path / "short")
    (tmp_path / "text").write_text("not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "text")
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        load_mnist_idx(tmp_path)


def test_mnist_idx_no_labels(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((6, 28, 28), np.uint8), True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), True)
    assert load_mnist(tmp_path)["x_valid"].shape == (1, 784)
    with pytest.raises(KeyError, match="y_train"):
        load_mnist(tmp_path, labels=True)


def _binary(rng, n):
    return (rng.random((n, 784)) < 0.3).astype(np.uint8)


def test_binarized_mnist_amat_text_and_matlab(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(1)
    splits = {"train": _binary(rng, 4), "valid": _binary(rng, 2), "test": _binary(rng, 3)}
    for split, images in splits.items():
        path = tmp_path / f"binarized_mnist_{split}.amat"
        if split == "valid":  # some published copies are MATLAB files named .amat
            with open(path, "wb") as handle:
                scipy_io.savemat(handle, {"X": images})
        else:
            np.savetxt(path, images, fmt="%d")
    for data in (load_binarized_mnist(tmp_path), load_mnist(tmp_path)):
        for split, images in splits.items():
            np.testing.assert_array_equal(data["x_" + split], images)
            assert data["x_" + split].dtype == np.float32
    # dynamic binarisation of the fixed binarisation changes nothing
    binary = load_mnist(tmp_path)["x_train"]
    np.testing.assert_array_equal(dynamic_binarize(binary, rng), binary)
    with pytest.raises(KeyError, match="no labels"):
        load_mnist(tmp_path, labels=True)
    np.savetxt(tmp_path / "binarized_mnist_test.amat", splits["test"] * 2, fmt="%d")
    with pytest.raises(ValueError, match="other than 0 and 1"):
        load_binarized_mnist(tmp_path)


def test_omniglot_chardata_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(2)
    upright = rng.random((30, 784)).astype(np.float32)
    upright_test = rng.random((7, 784)).astype(np.float32)

    def columns(images):  # chardata.mat: 784 x N, each image in Fortran order
        return images.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(-1, 784).T

    path = tmp_path / "chardata.mat"
    scipy_io.savemat(path, {"data": columns(upright), "testdata": columns(upright_test)})
    raw = read_chardata(path)
    np.testing.assert_array_equal(raw["x_train"], upright)
    np.testing.assert_array_equal(raw["x_test"], upright_test)
    data = load_omniglot(path)
    # the IWAE protocol: shuffle with RandomState(123), hold out the last tenth here
    shuffled = upright[np.random.RandomState(123).permutation(30)]
    np.testing.assert_array_equal(data["x_train"], shuffled[:27])
    np.testing.assert_array_equal(data["x_valid"], shuffled[27:])
    np.testing.assert_array_equal(data["x_test"], upright_test)
    scipy_io.savemat(tmp_path / "other.mat", {"X": upright})
    with pytest.raises(KeyError, match="not chardata.mat"):
        load_omniglot(tmp_path / "other.mat")
