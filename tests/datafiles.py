"""Files the tests write in the formats the project reads: IDX (the MNIST family), and the
benchmarks' pool builder loaded as a module (benchmarks/ are scripts, not a package)."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path
from types import ModuleType

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: two zero bytes, type code 0x08 (uint8), number of dims, big-endian sizes, data;
    gzipped when the name ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
