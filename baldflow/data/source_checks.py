"""Preflight checks of the built-in sources: their files are where the loaders will look,
found before a campaign starts any server (each raises `SourceNotReadyError`, one line)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from baldflow.data.disk_source import part_path
from baldflow.data.object_store import ObjectStoreError, ObjectURL, is_url
from baldflow.data.source import SourceNotReadyError
from baldflow.data.sources import FASHION_MNIST_ROOT, IMAGE_SUFFIXES

# The four IDX files of the MNIST family, as the loaders in baldflow.data.sources look for them.
_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


def check_disk_source(root: Path | None, options: Mapping[str, Any]) -> None:
    """A pool on disk: DIR/pool, DIR/val and DIR/test, each a finished pool directory
    (pool.json written), an image folder of class folders, or DIR/<part>.npz."""
    build = "python benchmarks/make_pool.py --campaign-source --out DIR builds one"
    if root is None:
        raise SourceNotReadyError(f"data.source disk needs data.root=DIR; {build}")
    if is_url(root):
        try:
            base = ObjectURL.parse(str(root))
            missing = [part for part in ("pool", "val", "test") if part_path(base, part) is None]
        except ObjectStoreError as error:
            raise SourceNotReadyError(f"data.root {root}: {error}") from None
    else:
        base = Path(root).expanduser()
        missing = [part for part in ("pool", "val", "test") if not _disk_part_ready(base, part)]
    if missing:
        raise SourceNotReadyError(
            f"data.root {base} lacks a finished pool in {', '.join(f'{m}/' for m in missing)} "
            f"(each a directory with pool.json, x.npy, y.npy, ids.txt, an image folder "
            f"<part>/<class>/<image>, or a <part>.npz saved with np.savez); {build}"
        )


def _disk_part_ready(base: Path, part: str) -> bool:
    """Where the disk source finds the part (`part_path`), ready to open: an .npz, a pool
    directory once its pool.json is written, or a folder of class folders without x.npy (an
    image folder: its images are checked when the campaign opens it)."""
    path = part_path(base, part)
    if path is None:
        return False
    if path.is_file() or (path / "pool.json").is_file():
        return True
    return not (path / "x.npy").exists() and any(p.is_dir() for p in path.iterdir())


def _idx_file(directory: Path, stem: str) -> bool:
    return (directory / f"{stem}.gz").is_file() or (directory / stem).is_file()


def _missing_idx(directory: Path) -> list[str]:
    return [stem for stem in _IDX_STEMS if not _idx_file(directory, stem)]


def _fetch_fix(name: str, root: Path | str) -> str:
    return f"--set data.root={root} --set data.options.download=true (torchvision fetches {name})"


def _check_download_target(source: str, root: Path) -> None:
    problem = unwritable(root)
    if problem:
        raise SourceNotReadyError(
            f"data.source {source!r} with data.options.download=true writes to data.root "
            f"{str(root)!r}, but {problem}; fix: --set data.root=<a writable directory>"
        )


def check_mnist(root: Path | None, options: Mapping[str, Any]) -> None:
    layout = (
        "DIR/MNIST/raw/train-images-idx3-ubyte and the three other IDX files, or the four "
        "IDX files (gzipped or not) in DIR itself"
    )
    if root is None:
        raise SourceNotReadyError(
            f"data.source 'mnist' reads its files from data.root, which is not set; fix: "
            f"--set data.root=DIR ({layout}), or to fetch them: {_fetch_fix('MNIST', 'DIR')}"
        )
    if options.get("download"):
        _check_download_target("mnist", root)
        return
    # The loader reads IDX files from root itself when the first is there, torchvision's
    # layout (raw files, or the legacy processed/*.pt) otherwise.
    if _idx_file(root, _IDX_STEMS[0]):
        missing = _missing_idx(root)
        if missing:
            raise SourceNotReadyError(
                f"MNIST is incomplete in data.root {str(root)!r}: missing "
                f"{', '.join(s + '[.gz]' for s in missing)}; fix: put them there, or "
                f"{_fetch_fix('MNIST', '<an empty directory>')}"
            )
        return
    raw = root / "MNIST" / "raw"
    processed = root / "MNIST" / "processed"
    if all((raw / stem).is_file() for stem in _IDX_STEMS):
        return
    if (processed / "training.pt").is_file() and (processed / "test.pt").is_file():
        return
    raise SourceNotReadyError(
        f"MNIST not found in data.root {str(root)!r} (looked for {layout}); fix: "
        f"{_fetch_fix('MNIST', root)}, or --set data.root=<the directory that holds it>"
    )


def check_fashion_mnist(root: Path | None, options: Mapping[str, Any]) -> None:
    directory = root or Path(FASHION_MNIST_ROOT)
    missing = _missing_idx(directory)
    if missing:
        where = "data.root" if root else "data.root unset, so the default"
        raise SourceNotReadyError(
            f"Fashion-MNIST not found in {str(directory)!r} ({where}; missing "
            f"{', '.join(s + '[.gz]' for s in missing)}); fix: --set data.root=<directory "
            f"holding the four IDX files>, or install them at {FASHION_MNIST_ROOT} with "
            f"apt-get install dataset-fashion-mnist"
        )


def check_cifar10(root: Path | None, options: Mapping[str, Any]) -> None:
    layout = "DIR/cifar-10-batches-py/data_batch_1 ... test_batch, batches.meta"
    if root is None:
        raise SourceNotReadyError(
            f"data.source 'cifar10' reads its files from data.root, which is not set; fix: "
            f"--set data.root=DIR ({layout}), or to fetch them: {_fetch_fix('CIFAR-10', 'DIR')}"
        )
    if options.get("download"):
        _check_download_target("cifar10", root)
        return
    batches = root / "cifar-10-batches-py"
    missing = [name for name in _CIFAR_FILES if not (batches / name).is_file()]
    if missing:
        raise SourceNotReadyError(
            f"CIFAR-10 not found in data.root {str(root)!r} (missing {', '.join(missing)} in "
            f"{batches}); fix: {_fetch_fix('CIFAR-10', root)}, or --set data.root=<the "
            f"directory holding cifar-10-batches-py/>"
        )


def check_npz(root: Path | None, options: Mapping[str, Any]) -> None:
    given = options.get("path")
    file = Path(given).expanduser() if given else root
    field = "data.options.path" if given else "data.root"
    if file is None:
        raise SourceNotReadyError(
            "data.source 'npz' reads one .npz file named by data.root, which is not set; "
            "fix: --set data.root=FILE.npz"
        )
    if not file.is_file():
        raise SourceNotReadyError(
            f"data.source 'npz' reads {field} {str(file)!r}, which is not a file; fix: "
            f"--set {field}=FILE.npz (X [N, ...] and y [N] arrays)"
        )


def check_folder(root: Path | None, options: Mapping[str, Any]) -> None:
    layout = "DIR/<class>/<image>, or DIR/train/<class>/ and DIR/test/<class>/"
    if root is None:
        raise SourceNotReadyError(
            f"data.source 'folder' reads images from data.root, which is not set; fix: "
            f"--set data.root=DIR ({layout})"
        )
    if not root.is_dir():
        raise SourceNotReadyError(
            f"data.source 'folder' reads images from data.root {str(root)!r}, which is not a "
            f"directory; fix: --set data.root=DIR ({layout})"
        )
    if not _has_an_image(root):
        raise SourceNotReadyError(
            f"data.root {str(root)!r} holds no images in class folders ({layout}; suffixes "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}); fix: --set data.root=<such a directory>"
        )


def _has_an_image(directory: Path) -> bool:
    """Whether the tree has one image in a class folder; stops at the first (trees are big)."""
    classes = [p for p in directory.iterdir() if p.is_dir()]
    for class_dir in classes:
        for path in class_dir.rglob("*"):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                return True
    return False


def unwritable(directory: Path) -> str | None:
    """Why files cannot be created in `directory` (made if missing), or None if they can.

    The nearest existing ancestor is probed by creating a file in it: permission bits say
    nothing to root, and a read-only mount only shows on writing. (The same rule as
    `baldflow.preflight`'s store check: the data layer cannot import the preflight, which
    imports the config.)
    """
    directory = directory.absolute()
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(existing)!r} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".baldflow-preflight-"):
            pass
    except OSError as exc:
        return f"{str(existing)!r} is not writable ({exc.strerror or exc})"
    return None
