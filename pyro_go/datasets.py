"""Data for the discrete-VAE experiments (GO paper appendix I), with no download.

Each loader takes ``source``: a path to an ``.npz`` archive (such as the offline copies
of MNIST and Omniglot described in the project's data README), a mapping of arrays, or
``None`` for the tiny subset bundled with the package (1000/200/200 MNIST images, 500/100
Omniglot images) so that demos and tests run anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from importlib import resources

import numpy as np

PIXELS = 784
Source = str | os.PathLike | Mapping[str, np.ndarray] | None


def _open(source: Source, bundled: str) -> Mapping[str, np.ndarray]:
    if source is None:
        with resources.files("pyro_go").joinpath("data", bundled).open("rb") as handle:
            with np.load(handle) as archive:
                return {key: archive[key] for key in archive.files}
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no dataset archive at {path!r}")
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def _images(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...], where: str) -> dict:
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise KeyError(f"{where}: missing arrays {missing}; found {sorted(arrays)}")
    out = {}
    for key in keys:
        images = np.asarray(arrays[key])
        if images.ndim != 2 or images.shape[1] != PIXELS:
            raise ValueError(f"{where}: {key} must have shape [N, {PIXELS}], got {images.shape}")
        out[key] = images
    return out


def load_mnist(source: Source = None) -> dict[str, np.ndarray]:
    """Grayscale MNIST: ``x_train``, ``x_valid``, ``x_test`` as uint8 ``[N, 784]`` in
    0..255 (binarise dynamically with :func:`dynamic_binarize`)."""
    arrays = _open(source, "mnist_small.npz")
    return _images(arrays, ("x_train", "x_valid", "x_test"), "load_mnist")


def load_omniglot(source: Source = None) -> dict[str, np.ndarray]:
    """Omniglot 28x28 as float32 ink fractions in [0, 1]: ``x_train``, ``x_valid``,
    ``x_test``.  When the source has no ``x_valid``, the IWAE protocol applies: shuffle
    ``x_train`` with ``RandomState(123)`` and hold out its last 1345 images (or a tenth,
    for small subsets)."""
    arrays = _open(source, "omniglot_small.npz")
    keys = ("x_train", "x_valid", "x_test") if "x_valid" in arrays else ("x_train", "x_test")
    images = _images(arrays, keys, "load_omniglot")
    images = {
        key: (value.astype(np.float32) / 255.0 if value.dtype == np.uint8 else value)
        for key, value in images.items()
    }
    if "x_valid" not in images:
        train = images["x_train"][np.random.RandomState(123).permutation(len(images["x_train"]))]
        held_out = 1345 if len(train) > 10 * 1345 else len(train) // 10
        images["x_train"], images["x_valid"] = train[:-held_out], train[-held_out:]
    return {key: images[key].astype(np.float32) for key in ("x_train", "x_valid", "x_test")}


def dynamic_binarize(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample ``x ~ Bernoulli(intensity)`` per pixel (uint8 0..255 or float in [0, 1]),
    as in IWAE, REBAR, RELAX and GO; returns float32."""
    intensity = images / 255.0 if images.dtype == np.uint8 else images
    return (rng.random(images.shape) < intensity).astype(np.float32)


def minibatches(images: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator:
    """Endless shuffled minibatches (each epoch a fresh permutation)."""
    if batch_size > len(images):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} images")
    while True:
        order = rng.permutation(len(images))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield images[order[start : start + batch_size]]
