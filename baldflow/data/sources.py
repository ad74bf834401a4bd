"""Data sources selectable by name; each reads local files (never the network unless
`download=True` is passed) and returns normalised `DataSplits` with stable sample ids."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from baldflow.data.splits import (
    DataNotFoundError,
    DataSourceError,
    DataSplits,
    check_texts,
    derived_generator,
    resolve_size,
)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# Validation set carved out of a fixed training set (mnist, fashion-mnist, cifar10): large enough
# for early stopping to be stable, small enough that evaluating it each epoch stays cheap on CPU.
DEFAULT_VAL_SIZE = 1000


# ---------------------------------------------------------------------------------------------
# Shared assembly: split, subsample, normalise.


def _finish(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: list[str],
    class_names: list[str],
    *,
    seed: int,
    test: tuple[torch.Tensor, torch.Tensor] | None,
    val_size: int | float,
    test_size: int | float,
    pool_size: int | None,
    normalize: bool,
    info: dict | None = None,
) -> DataSplits:
    """Split a labelled set into pool/val(/test) with a seeded permutation, optionally subsample
    the pool and standardise every split with the pool's per-channel statistics.

    Ids and class names are checked here, for every source, before anything is written with
    them (see `check_texts` for what is refused and why)."""
    where = f"data source {name!r}" + "".join(
        f" ({key} {info[key]})" for key in ("path", "root") if info and key in info
    )
    check_texts("sample id", ids, where)
    check_texts("class name", class_names, where)
    n = x.shape[0]
    order = torch.randperm(n, generator=derived_generator(seed, f"{name}/split"))
    if test is None:
        n_test = resolve_size("test_size", test_size, n)
        test_idx, order = order[:n_test], order[n_test:]
        test = (x[test_idx], y[test_idx])
    n_val = resolve_size("val_size", val_size, order.numel())
    val_idx, pool_idx = order[:n_val], order[n_val:]
    if pool_size is not None:
        if not isinstance(pool_size, int) or pool_size < 1:
            raise DataSourceError(f"pool_size must be a positive count, got {pool_size!r}")
        pool_idx = pool_idx[:pool_size]
    # Sorted so the pool keeps the source's order: reading ids top to bottom stays natural.
    pool_idx = pool_idx.sort().values
    pool_x, val_x, test_x = x[pool_idx], x[val_idx], test[0]
    meta = {"source": name, "seed": seed, **(info or {})}
    if normalize:
        channel_dims = [0] + list(range(2, pool_x.ndim))
        mean = pool_x.mean(dim=channel_dims, keepdim=True)
        std = pool_x.std(dim=channel_dims, keepdim=True).clamp_min(1e-6)
        pool_x, val_x, test_x = ((t - mean) / std for t in (pool_x, val_x, test_x))
        meta["normalize_mean"] = mean.flatten().tolist()
        meta["normalize_std"] = std.flatten().tolist()
    return DataSplits(
        pool_x=pool_x.contiguous(),
        pool_y=y[pool_idx],
        pool_ids=[ids[i] for i in pool_idx.tolist()],
        val_x=val_x.contiguous(),
        val_y=y[val_idx],
        test_x=test_x.contiguous(),
        test_y=test[1],
        class_names=class_names,
        info=meta,
    )


def _as_float_images(array: np.ndarray | torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 images to float32 in [0, 1], channels first: [N, H, W] gets a channel axis and
    [N, H, W, C] is transposed when `channels_last`."""
    t = torch.as_tensor(np.asarray(array))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif channels_last:
        t = t.permute(0, 3, 1, 2)
    return t.to(torch.float32).div(255.0)


# ---------------------------------------------------------------------------------------------
# IDX (the MNIST family's file format).

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): 2 zero bytes, a type code, the number of
    dimensions, big-endian int32 sizes, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataSourceError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">i4"))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise DataSourceError(
            f"{path}: header says shape {shape} but the file holds {len(raw) - header} data bytes"
        )
    return np.frombuffer(raw[header:], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_set(root: Path, what: str, how_to_get: str):
    stems = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    paths = [_find_idx(root, stem) for stem in stems]
    missing = [stem for stem, p in zip(stems, paths, strict=True) if p is None]
    if missing:
        raise DataNotFoundError(
            f"{what} not found in {root} (missing {', '.join(s + '[.gz]' for s in missing)}). "
            f"{how_to_get}"
        )
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    return train_x, train_y, test_x, test_y


def _fixed_test_source(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    class_names: list[str],
    *,
    seed: int,
    val_size: int | float = DEFAULT_VAL_SIZE,
    pool_size: int | None = None,
    normalize: bool = True,
    info: dict | None = None,
) -> DataSplits:
    x = _as_float_images(train_x)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    ids = [str(i) for i in range(x.shape[0])]
    test = (_as_float_images(test_x), torch.as_tensor(np.asarray(test_y), dtype=torch.long))
    return _finish(
        name,
        x,
        y,
        ids,
        class_names,
        seed=seed,
        test=test,
        val_size=val_size,
        test_size=0,
        pool_size=pool_size,
        normalize=normalize,
        info=info,
    )


# ---------------------------------------------------------------------------------------------
# The sources.


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as (images N x 8 x 8, targets), read from the file scikit-learn ships.

    Reading its CSV directly takes milliseconds; importing scikit-learn for it takes about a
    second, which every audit command that rebuilds a pool (the report) would pay.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def load_digits_source(
    root: str | None = None,
    *,
    seed: int = 0,
    val_size: int | float = 0.1,
    test_size: int | float = 0.2,
    pool_size: int | None = None,
    normalize: bool = True,
) -> DataSplits:
    """scikit-learn's 8x8 digits (1,797 images, shipped with scikit-learn): a seeded split into
    pool/val/test. Sample ids are the row numbers of `sklearn.datasets.load_digits`."""
    images, target = _digits_arrays()
    # Pixel values are counts 0..16.
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(target, dtype=torch.long)
    ids = [str(i) for i in range(x.shape[0])]
    return _finish(
        "digits",
        x,
        y,
        ids,
        [str(c) for c in range(10)],
        seed=seed,
        test=None,
        val_size=val_size,
        test_size=test_size,
        pool_size=pool_size,
        normalize=normalize,
    )


def load_fashion_mnist(
    root: str | None = None,
    *,
    seed: int = 0,
    val_size: int | float = DEFAULT_VAL_SIZE,
    pool_size: int | None = None,
    normalize: bool = True,
) -> DataSplits:
    """Fashion-MNIST from the four IDX files (gzipped or not) in `root`, by default where
    Debian's `dataset-fashion-mnist` package installs them. Ids are training-set row numbers."""
    directory = Path(root or FASHION_MNIST_ROOT)
    arrays = _read_idx_set(
        directory,
        "Fashion-MNIST",
        "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass "
        "root=<directory holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz>.",
    )
    return _fixed_test_source(
        "fashion-mnist",
        *arrays,
        list(FASHION_MNIST_CLASSES),
        seed=seed,
        val_size=val_size,
        pool_size=pool_size,
        normalize=normalize,
        info={"root": str(directory)},
    )


def _need_root(name: str, root: str | None, layout: str) -> Path:
    if root is None:
        raise DataSourceError(
            f"source {name!r} needs root=<directory> ({layout}); add download=True to fetch it "
            f"there through torchvision"
        )
    return Path(root).expanduser()


def load_mnist(
    root: str | None = None,
    *,
    seed: int = 0,
    download: bool = False,
    val_size: int | float = DEFAULT_VAL_SIZE,
    pool_size: int | None = None,
    normalize: bool = True,
) -> DataSplits:
    """MNIST through torchvision from `root` (layout root/MNIST/raw/*-ubyte or the legacy
    root/MNIST/processed/{training,test}.pt); a directory holding the four IDX files directly
    also works. Downloads only with `download=True`. Ids are training-set row numbers."""
    directory = _need_root("mnist", root, "torchvision layout root/MNIST/raw/*-ubyte")
    if not download and _find_idx(directory, "train-images-idx3-ubyte") is not None:
        arrays = _read_idx_set(directory, "MNIST", "")
    else:
        from torchvision.datasets import MNIST

        try:
            train = MNIST(str(directory), train=True, download=download)
            test = MNIST(str(directory), train=False, download=download)
        except RuntimeError as error:
            raise DataNotFoundError(
                f"MNIST not found under {directory} (torchvision expects "
                f"{directory / 'MNIST' / 'raw'}/train-images-idx3-ubyte and friends): {error}. "
                f"Pass download=True to fetch it."
            ) from error
        arrays = (
            train.data.numpy(),
            train.targets.numpy(),
            test.data.numpy(),
            test.targets.numpy(),
        )
    return _fixed_test_source(
        "mnist",
        *arrays,
        [str(c) for c in range(10)],
        seed=seed,
        val_size=val_size,
        pool_size=pool_size,
        normalize=normalize,
        info={"root": str(directory)},
    )


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def load_cifar10(
    root: str | None = None,
    *,
    seed: int = 0,
    download: bool = False,
    val_size: int | float = DEFAULT_VAL_SIZE,
    pool_size: int | None = None,
    normalize: bool = True,
) -> DataSplits:
    """CIFAR-10 from torchvision's python layout root/cifar-10-batches-py/{data_batch_1..5,
    test_batch,batches.meta}. Downloads (through torchvision) only with `download=True`.
    The batches are read here rather than by torchvision's class, which insists on the official
    checksums and so rejects subsets. Ids are training-set row numbers (batch order)."""
    directory = _need_root("cifar10", root, "torchvision layout root/cifar-10-batches-py/")
    if download:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(directory), train=True, download=True)
    batches = directory / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    missing = [n for n in names if not (batches / n).is_file()]
    if missing:
        raise DataNotFoundError(
            f"CIFAR-10 not found in {batches} (missing {', '.join(missing)}); pass download=True "
            f"to fetch it through torchvision"
        )

    def read(batch_names: list[str]):
        entries = [_unpickle(batches / n) for n in batch_names]
        data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
        labels = np.concatenate([np.asarray(e["labels"], dtype=np.int64) for e in entries])
        return data.reshape(-1, 3, 32, 32), labels

    train_x, train_y = read(names[:5])
    test_x, test_y = read(["test_batch"])
    class_names = [str(n) for n in _unpickle(batches / "batches.meta")["label_names"]]
    return _fixed_test_source(
        "cifar10",
        train_x,
        train_y,
        test_x,
        test_y,
        class_names,
        seed=seed,
        val_size=val_size,
        pool_size=pool_size,
        normalize=normalize,
        info={"root": str(directory)},
    )


def _encode_labels(y: np.ndarray, class_names: list[str] | None):
    if class_names is not None:
        labels = torch.as_tensor(y.astype(np.int64))
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DataSourceError(
                f"labels must lie in [0, {len(class_names)}) when class_names is given, got "
                f"range [{int(labels.min())}, {int(labels.max())}]"
            )
        return labels, list(class_names)
    values, inverse = np.unique(y, return_inverse=True)
    names = [
        v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)
        for v in values.tolist()
    ]
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long), names


def npz_texts(
    array: np.ndarray,
    file: Path,
    key: str,
    *,
    first: int = 0,
    error: type[DataSourceError] = DataSourceError,
) -> list[str]:
    """An npz array of ids or names as Python strings; bytes must be UTF-8 (a bytes element's
    str() would be the literal "b'...'"). `first`: the entry number of the array's first
    element (a slice of a longer array), for the error; `error`: the exception to raise."""
    out = []
    for position, value in enumerate(array.reshape(-1).tolist(), first):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as problem:
                raise error(
                    f"{file}: {key} entry {position} ({value[:40]!r}) is not UTF-8: {problem}"
                ) from problem
        out.append(str(value))
    return out


def load_npz(
    root: str | None = None,
    *,
    seed: int = 0,
    path: str | None = None,
    val_size: int | float = 0.1,
    test_size: int | float = 0.2,
    pool_size: int | None = None,
    normalize: bool = True,
) -> DataSplits:
    """A user's .npz file (`root` or `path`) with arrays X [N, ...] and y [N], optionally `ids`
    (stable sample ids, default the row number), `class_names`, and X_test/y_test (a fixed test
    set; otherwise a seeded split). uint8 X is scaled to [0, 1]; 3-d X gets a channel axis.
    Labels that are not 0..C-1 are mapped to their sorted distinct values.

    Ids and class names are untrusted text: markup, `$`, commas, quotes, any script, emoji and
    long ids are kept as they are (every output escapes them), while control characters
    (newline, tab, NUL, ...), invisible format characters (bidi overrides, zero-width space),
    leading or trailing whitespace, a leading apostrophe, empty or duplicate values are refused
    with an error naming the entry (rules: `baldflow.common.text_problem`)."""
    file = path or root
    if file is None:
        raise DataSourceError("source 'npz' needs root=<file.npz> (or path=)")
    file = Path(file).expanduser()
    if not file.is_file():
        raise DataNotFoundError(f"npz file {file} does not exist")
    with np.load(file, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for key in ("X", "y"):
        if key not in arrays:
            raise DataSourceError(f"{file} has no array {key!r} (found {sorted(arrays)})")
    X, y = arrays["X"], arrays["y"].reshape(-1)
    if X.shape[0] != y.shape[0]:
        raise DataSourceError(f"{file}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    has_test = "X_test" in arrays and "y_test" in arrays
    names = None
    if "class_names" in arrays:
        names = npz_texts(arrays["class_names"], file, "class_names")
    all_y = np.concatenate([y, arrays["y_test"].reshape(-1)]) if has_test else y
    labels, class_names = _encode_labels(all_y, names)

    def features(a: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(a)
        t = t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float32)
        return t.unsqueeze(1) if t.ndim == 3 else t

    x = features(X)
    if "ids" in arrays:
        ids = npz_texts(arrays["ids"], file, "ids")
        if len(ids) != x.shape[0]:
            raise DataSourceError(f"{file}: ids has {len(ids)} entries for {x.shape[0]} rows")
    else:
        ids = [str(i) for i in range(x.shape[0])]
    test = (features(arrays["X_test"]), labels[len(y) :]) if has_test else None
    return _finish(
        "npz",
        x,
        labels[: len(y)],
        ids,
        class_names,
        seed=seed,
        test=test,
        val_size=val_size,
        test_size=test_size,
        pool_size=pool_size,
        normalize=normalize,
        info={"path": str(file)},
    )


# PIL modes read as one channel (anything else is read as RGB).
GRAYSCALE_MODES = frozenset({"L", "1", "I;16", "I"})


def open_image(path: Path, error: type[DataSourceError] = DataSourceError):
    """`PIL.Image.open(path)` (lazy: reads the header), or `error` naming the file. Use it in
    a with block so the file is closed before the next one is opened."""
    from PIL import Image

    try:
        return Image.open(path)
    except (OSError, ValueError) as problem:
        raise error(f"{path} is not a readable image: {problem}") from problem


def _scan_image_tree(directory: Path) -> list[tuple[Path, str]]:
    """(image path, class name) for every image under directory/<class>/."""
    items = []
    for class_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        for image in sorted(class_dir.rglob("*")):
            if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
                items.append((image, class_dir.name))
    return items


def load_folder(
    root: str | None = None,
    *,
    seed: int = 0,
    grayscale: bool | None = None,
    size: int | tuple[int, int] | None = None,
    val_size: int | float = 0.1,
    test_size: int | float = 0.2,
    pool_size: int | None = None,
    normalize: bool = True,
) -> DataSplits:
    """An image tree in torchvision's ImageFolder layout, root/<class>/<image>; a root holding
    exactly `train/` and `test/` trees gives a fixed test set. Ids are paths relative to root.
    Images are read as RGB, or grayscale when `grayscale` (default: when every image is) and
    resized to `size` if given, else they must all have the same size. Each file is closed
    before the next is opened, so trees of any size load under a small open-file limit.

    Folder and file names become class names and ids: they follow the npz source's rules
    (`baldflow.common.text_problem`), so a name holding a newline, a tab or another control
    character, a bidi override, leading or trailing whitespace or a leading apostrophe is
    refused with an error naming it; any other name (brackets, `$`, commas, any script,
    emoji) is kept."""
    if root is None:
        raise DataSourceError("source 'folder' needs root=<directory with one folder per class>")
    directory = Path(root).expanduser()
    if not directory.is_dir():
        raise DataNotFoundError(f"image folder {directory} does not exist")
    subdirs = {p.name for p in directory.iterdir() if p.is_dir()}
    split_trees = subdirs == {"train", "test"}
    train_items = _scan_image_tree(directory / "train" if split_trees else directory)
    test_items = _scan_image_tree(directory / "test") if split_trees else []
    if not train_items:
        raise DataNotFoundError(f"no images found under {directory}/<class>/")
    class_names = sorted({c for _, c in train_items + test_items})
    class_index = {c: i for i, c in enumerate(class_names)}

    paths = [p for p, _ in train_items + test_items]

    if grayscale is None:
        # Opening reads only the header: this pass is cheap even for large trees.
        modes = set()
        for path in paths:
            with open_image(path) as im:
                modes.add(im.mode)
        grayscale = modes <= GRAYSCALE_MODES
    mode = "L" if grayscale else "RGB"
    target = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
    arrays = []
    first_size = None
    for path in paths:
        with open_image(path) as im:
            picture = im.convert(mode)
        if target is not None:
            picture = picture.resize((target[1], target[0]))
        elif first_size is None:
            first_size = picture.size
        elif picture.size != first_size:
            raise DataSourceError(
                f"{path} is {picture.size[0]}x{picture.size[1]} but {paths[0]} is "
                f"{first_size[0]}x{first_size[1]}; pass size= to resize"
            )
        arrays.append(np.asarray(picture, dtype=np.uint8))
    x_all = _as_float_images(np.stack(arrays), channels_last=not grayscale)
    y_all = torch.tensor([class_index[c] for _, c in train_items + test_items], dtype=torch.long)
    base = directory / "train" if split_trees else directory
    ids = [p.relative_to(base).as_posix() for p, _ in train_items]
    n = len(train_items)
    test = (x_all[n:], y_all[n:]) if split_trees else None
    return _finish(
        "folder",
        x_all[:n],
        y_all[:n],
        ids,
        class_names,
        seed=seed,
        test=test,
        val_size=val_size,
        test_size=test_size,
        pool_size=pool_size,
        normalize=normalize,
        info={"root": str(directory)},
    )


SOURCES: dict[str, Callable[..., DataSplits]] = {
    "digits": load_digits_source,
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "npz": load_npz,
    "folder": load_folder,
}

DEFAULT_SOURCE = "digits"
