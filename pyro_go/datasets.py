"""Data for the discrete-VAE experiments (GO paper appendix I), with no download.

Each loader takes ``source``: a path to data in its standard public format (see below), a
path to an ``.npz`` archive with the arrays named as the loader returns them, a mapping of
arrays, or ``None`` for the tiny subset bundled with the package (1000/200/200 MNIST
images, 500/100 Omniglot images) so that demos and tests run anywhere.

Standard formats read from a path (nothing is downloaded):

* MNIST IDX files (LeCun et al.): a directory holding ``train-images-idx3-ubyte`` and
  ``t10k-images-idx3-ubyte`` (and optionally the ``-labels-idx1-ubyte`` files), each
  gzip-compressed (``.gz``) or not, with ``-`` or ``.`` before ``idx``: :func:`load_mnist`.
* The fixed binarisation of MNIST (Larochelle and Murray, 2011): a directory holding
  ``binarized_mnist_{train,valid,test}.amat`` (text, 784 zeros and ones a line; MATLAB v5
  files with one variable ``X`` under that name are read too): :func:`load_binarized_mnist`,
  or :func:`load_mnist` given that directory.
* Omniglot 28x28 as used by IWAE, REBAR, RELAX and GO (Burda et al., 2016):
  ``chardata.mat``: :func:`load_omniglot`.

References:

* Y. LeCun, C. Cortes, C. J. C. Burges. *The MNIST database of handwritten digits.*
* H. Larochelle, I. Murray. *The neural autoregressive distribution estimator.*
  AISTATS 2011.
* B. M. Lake, R. Salakhutdinov, J. B. Tenenbaum. *Human-level concept learning through
  probabilistic program induction.* Science 2015.
* Y. Burda, R. Grosse, R. Salakhutdinov. *Importance weighted autoencoders.* ICLR 2016.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path

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


# --- standard public formats ------------------------------------------------------------

_IDX_TYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_MATLAB_MAGIC = b"MATLAB"


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, decompressed when it is gzip (read from its magic number)."""
    data = Path(path).read_bytes()
    return gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the format of the MNIST downloads), gzip-compressed or not.

    The header is two zero bytes, a type code (``0x08`` for uint8, ...), the number of
    dimensions and one big-endian 32-bit size per dimension; the data follow in C order.
    Returns an array of that shape in native byte order.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_TYPES:
        raise ValueError(f"{os.fspath(path)!r} is not an IDX file (header {data[:4]!r})")
    dtype = np.dtype(_IDX_TYPES[data[2]])
    ndim = data[3]
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{os.fspath(path)!r}: header says shape {shape} ({expected} bytes), "
            f"file has {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for candidate in (directory / (stem + suffix) for suffix in suffixes):
        if candidate.is_file():
            return candidate
    return None


def _find_idx(directory: Path, name: str) -> Path | None:
    """``name`` such as ``train-images``: ``train-images-idx3-ubyte`` or
    ``train-images.idx3-ubyte``, each optionally ending in ``.gz``."""
    rank = "idx3" if "images" in name else "idx1"
    stems = (f"{name}-{rank}-ubyte", f"{name}.{rank}-ubyte")
    for stem in stems:
        found = _find(directory, stem, ("", ".gz"))
        if found is not None:
            return found
    return None


def _split_validation(train: np.ndarray, held_out: int) -> tuple[np.ndarray, np.ndarray]:
    return train[:-held_out], train[-held_out:]


_MNIST_IDX = {
    "train-images": ("train", "x_"),
    "train-labels": ("train", "y_"),
    "t10k-images": ("test", "x_"),
    "t10k-labels": ("test", "y_"),
}


def load_mnist_idx(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """MNIST from the four IDX downloads in ``directory`` (gzip-compressed or not).

    Returns ``x_train``, ``x_valid``, ``x_test`` as uint8 ``[N, 784]`` in 0..255, and
    ``y_train``, ``y_valid``, ``y_test`` (uint8 digit labels) when the label files are
    there. The usual 50k/10k split of the 60k training file: its last 10,000 images are
    the validation set (the last sixth for smaller files), in the file's order.
    """
    directory = Path(directory)
    found = {name: _find_idx(directory, name) for name in _MNIST_IDX}
    missing = [name for name in ("train-images", "t10k-images") if found[name] is None]
    if missing:
        raise FileNotFoundError(
            f"no MNIST IDX files {missing} (e.g. train-images-idx3-ubyte.gz) in {directory}"
        )
    out: dict[str, np.ndarray] = {}
    for name, path in found.items():
        if path is None:
            continue
        array = read_idx(path)
        if "images" in name:
            array = array.reshape(len(array), -1)
        split, key = _MNIST_IDX[name]
        if split == "train":
            held_out = 10_000 if len(array) == 60_000 else max(len(array) // 6, 1)
            out[key + "train"], out[key + "valid"] = _split_validation(array, held_out)
        else:
            out[key + "test"] = array
    return out


def _read_amat(path: Path) -> np.ndarray:
    """One ``.amat`` file: text rows of 784 zeros and ones, or (as some copies are) a
    MATLAB v5 file holding the same array as its variable ``X``."""
    with open(path, "rb") as handle:
        head = handle.read(len(_MATLAB_MAGIC))
    if head == _MATLAB_MAGIC:
        from scipy.io import loadmat

        return np.asarray(loadmat(path)["X"], dtype=np.uint8)
    return np.loadtxt(path, dtype=np.uint8, ndmin=2)


def load_binarized_mnist(source: str | os.PathLike | Mapping[str, np.ndarray]) -> dict:
    """The fixed binarisation of MNIST (Larochelle and Murray, 2011), as used by REBAR and
    RELAX: ``x_train``, ``x_valid``, ``x_test`` (50k/10k/10k) as float32 ``[N, 784]`` in
    {0, 1}, from a directory holding ``binarized_mnist_{train,valid,test}.amat``, an
    ``.npz`` archive or a mapping with those arrays.

    Float values in {0, 1} make :func:`dynamic_binarize` the identity, so code written
    for dynamically binarised MNIST trains on the fixed binarisation unchanged. The test
    split of the original files is sorted by digit: take a random subset, not a prefix.
    """
    if not isinstance(source, Mapping) and Path(source).is_dir():
        directory = Path(source)
        arrays = {}
        for split in ("train", "valid", "test"):
            path = _find(directory, f"binarized_mnist_{split}", (".amat",))
            if path is None:
                raise FileNotFoundError(f"no binarized_mnist_{split}.amat in {directory}")
            arrays["x_" + split] = _read_amat(path)
    else:
        arrays = _open(source, "")
    images = _images(arrays, ("x_train", "x_valid", "x_test"), "load_binarized_mnist")
    for key, value in images.items():
        if not np.isin(value, (0, 1)).all():
            raise ValueError(f"load_binarized_mnist: {key} has values other than 0 and 1")
    return {key: value.astype(np.float32) for key, value in images.items()}


def load_mnist(source: Source = None, labels: bool = False) -> dict[str, np.ndarray]:
    """MNIST: ``x_train``, ``x_valid``, ``x_test`` as ``[N, 784]`` arrays.

    From the IDX downloads (a directory, see :func:`load_mnist_idx`), an ``.npz`` archive,
    a mapping or the bundled subset: grayscale, uint8 in 0..255 (binarise dynamically with
    :func:`dynamic_binarize`). From a directory of the fixed binarisation's ``.amat``
    files: float32 in {0, 1} (see :func:`load_binarized_mnist`). With ``labels=True`` the
    digit labels ``y_train``, ``y_valid``, ``y_test`` come too (an error where the source
    has none).
    """
    if isinstance(source, str | os.PathLike) and Path(source).is_dir():
        directory = Path(source)
        if _find(directory, "binarized_mnist_train", (".amat",)) is not None:
            if labels:
                raise KeyError("load_mnist: the binarised MNIST .amat files have no labels")
            return load_binarized_mnist(directory)
        arrays = load_mnist_idx(directory)
    else:
        arrays = _open(source, "mnist_small.npz")
    images = _images(arrays, ("x_train", "x_valid", "x_test"), "load_mnist")
    if labels:
        keys = ("y_train", "y_valid", "y_test")
        missing = [key for key in keys if key not in arrays]
        if missing:
            raise KeyError(f"load_mnist: labels {missing} missing; found {sorted(arrays)}")
        images.update({key: np.asarray(arrays[key]) for key in keys})
    return images


def read_chardata(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Omniglot's ``chardata.mat`` (Burda et al., 2016): ``x_train`` and ``x_test`` as
    float32 ``[N, 784]`` in [0, 1], upright in C order.

    The file stores ``data`` and ``testdata`` as ``784 x N`` columns of 28x28 images in
    Fortran (column-major) order; they are transposed and re-ordered here as IWAE's
    loader does. Needs scipy.
    """
    from scipy.io import loadmat

    raw = loadmat(os.fspath(path))
    out = {}
    for key, name in (("x_train", "data"), ("x_test", "testdata")):
        if name not in raw:
            raise KeyError(f"{os.fspath(path)!r} has no variable {name!r} (not chardata.mat?)")
        columns = np.asarray(raw[name], dtype=np.float32).T
        out[key] = columns.reshape(-1, 28, 28).reshape(-1, PIXELS, order="F")
    return out


def load_omniglot(source: Source = None) -> dict[str, np.ndarray]:
    """Omniglot 28x28 as float32 ink fractions in [0, 1]: ``x_train``, ``x_valid``,
    ``x_test``, from ``chardata.mat`` (a path ending in ``.mat``, see
    :func:`read_chardata`), an ``.npz`` archive, a mapping or the bundled subset.
    When the source has no ``x_valid``, the IWAE protocol applies: shuffle ``x_train``
    with ``RandomState(123)`` and hold out its last 1345 images (or a tenth, for small
    subsets)."""
    if isinstance(source, str | os.PathLike) and os.fspath(source).endswith(".mat"):
        arrays: Mapping[str, np.ndarray] = read_chardata(source)
    else:
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
        images["x_train"], images["x_valid"] = _split_validation(train, held_out)
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
