"""The pool/validation/test container every data source returns, and seeded splitting helpers."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from baldflow.common import short_repr, text_problem


class DataSourceError(ValueError):
    """A data source name, option or file content is invalid."""


class DataNotFoundError(DataSourceError, FileNotFoundError):
    """The files a data source reads are not where it looked."""


def derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose (split, noise copy 2, ...) from a user seed; hashing keeps
    the streams independent, so adding a new use of randomness never shifts an existing one."""
    digest = hashlib.sha256(f"baldflow/{int(seed)}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def derived_generator(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, purpose))


@dataclass
class DataSplits:
    """A pool to acquire from, plus validation and test sets.

    `pool_y` holds the true pool labels; only the simulated oracle may read them. `pool_ids` are
    the stable sample ids (see `repeat_pool` for the ids of repeated copies). `info` records how
    the data were made (source, normalisation statistics, repetition) for tracking.
    """

    pool_x: torch.Tensor
    pool_y: torch.Tensor
    pool_ids: list[str]
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("pool", "val", "test"):
            x, y = getattr(self, f"{name}_x"), getattr(self, f"{name}_y")
            if x.shape[0] != y.shape[0]:
                raise DataSourceError(
                    f"{name}_x has {x.shape[0]} rows but {name}_y has {y.shape[0]}"
                )
            if x.shape[1:] != self.pool_x.shape[1:]:
                raise DataSourceError(
                    f"{name}_x has sample shape {tuple(x.shape[1:])}, pool_x has "
                    f"{tuple(self.pool_x.shape[1:])}"
                )
        if len(self.pool_ids) != self.pool_x.shape[0]:
            raise DataSourceError(
                f"pool_ids has {len(self.pool_ids)} ids for {self.pool_x.shape[0]} pool rows"
            )
        if len(set(self.pool_ids)) != len(self.pool_ids):
            seen: set[str] = set()
            twice = next(sid for sid in self.pool_ids if sid in seen or seen.add(sid))
            raise DataSourceError(f"pool_ids must be unique; {short_repr(twice)} appears twice")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.pool_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def index_of(self, ids: Iterable[str]) -> torch.Tensor:
        """Pool positions of sample ids (raises KeyError naming the first unknown id)."""
        positions = {sample_id: i for i, sample_id in enumerate(self.pool_ids)}
        out = []
        for sample_id in ids:
            if sample_id not in positions:
                raise KeyError(f"sample id {sample_id!r} is not in the pool")
            out.append(positions[sample_id])
        return torch.tensor(out, dtype=torch.long)

    def subset_pool(self, indices: torch.Tensor) -> DataSplits:
        """The same splits with the pool restricted to `indices` (ids travel with their rows)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return DataSplits(
            pool_x=self.pool_x[indices],
            pool_y=self.pool_y[indices],
            pool_ids=[self.pool_ids[i] for i in indices.tolist()],
            val_x=self.val_x,
            val_y=self.val_y,
            test_x=self.test_x,
            test_y=self.test_y,
            class_names=list(self.class_names),
            info=dict(self.info),
        )


def resolve_size(name: str, size: int | float, total: int) -> int:
    """A split size given as a count (int) or a fraction of `total` (float in (0, 1))."""
    if isinstance(size, bool):
        raise DataSourceError(f"{name} must be a count or a fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise DataSourceError(f"{name} as a fraction must be in (0, 1), got {size}")
        return max(1, round(size * total))
    if isinstance(size, int) and 0 <= size < total:
        return size
    raise DataSourceError(f"{name} must be a count in [0, {total}) or a fraction, got {size!r}")


def balanced_initial_indices(
    labels: torch.Tensor,
    per_class: int,
    generator: torch.Generator,
    num_classes: int | None = None,
) -> torch.Tensor:
    """`per_class` random pool indices of every class 0..num_classes-1, sorted ascending.

    `num_classes` defaults to max(label) + 1; a class with fewer than `per_class` members is an
    error rather than a silently unbalanced start.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if per_class < 0:
        raise DataSourceError(f"initial per_class must be >= 0, got {per_class}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        if members.numel() < per_class:
            raise DataSourceError(
                f"class {c} has only {members.numel()} pool samples, need per_class={per_class}"
            )
        order = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[order[:per_class]])
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(chosen).sort().values


def check_texts(kind: str, values: list[str], where: str) -> None:
    """Refuse sample ids or class names that no output could show faithfully.

    The rules per character class are `baldflow.common.text_problem`'s. Two values that differ
    only in Unicode normalisation (e.g. 'é' as one code point or as 'e' plus a combining
    accent) look the same to a person and a spreadsheet may store either: refused as well.
    """
    seen: dict[str, int] = {}
    for position, value in enumerate(values):
        problem = text_problem(value)
        if problem is not None:
            raise DataSourceError(
                f"{where}: {kind} {short_repr(value)} (entry {position}) {problem}; "
                f"rename it in the source data"
            )
        key = unicodedata.normalize("NFC", value)
        if key in seen:
            first = seen[key]
            if values[first] == value:
                raise DataSourceError(
                    f"{where}: {kind} {short_repr(value)} appears twice (entries {first} and "
                    f"{position}); {kind}s must be unique"
                )
            raise DataSourceError(
                f"{where}: {kind} {short_repr(value)} (entry {position}) looks the same as "
                f"{short_repr(values[first])} (entry {first}): they differ only in Unicode "
                f"normalisation; {kind}s must be unique"
            )
        seen[key] = position
