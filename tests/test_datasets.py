"""The dataset loaders and the bundled subsets."""

import numpy as np
import pytest

from pyro_go.datasets import dynamic_binarize, load_mnist, load_omniglot, minibatches


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
