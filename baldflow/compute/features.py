"""A frozen backbone's features (model.freeze: backbone): computed once per pool and backbone,
in shards like scoring, and cached on disk where later rounds, resumed campaigns and other
campaigns on the same pool and backbone find them.

The cache key is a hash of the backbone (its architecture spec and the prefix's weights), the
pool's content (its manifest), the validation and test sets and the preprocessing (the data
parameters): a changed weights file or pool makes a new cache, never a stale one. A shard's
rows are embedded in chunks that start at multiples of EMBED_CHUNK rows, however the pool was
cut into shards, so every runner (this process, a loop of shards, Dask workers) computes each
row in the same batch and writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baldflow.config import Config
from baldflow.data.disk_source import spill_key
from baldflow.data.feature_pool import FEATURES_FILE, FeaturePool, features_complete
from baldflow.data.ondisk import PoolWriter, write_json_atomically
from baldflow.data.pool import CampaignPool
from baldflow.data.pool_formats import cached_manifest, open_pool
from baldflow.seeds import STREAM_BACKBONE, generator_for

# Rows per forward pass of the backbone; chunk boundaries are multiples of it (see above).
EMBED_CHUNK = 256
# Rows copied at a time from the shards into the features pool.
ASSEMBLE_ROWS = 16_384
BACKBONE_DIR = "backbone"
SHARDS_DIR = "shards"
PARTS = ("pool", "val", "test")


@dataclasses.dataclass(frozen=True)
class FeatureJob:
    """What an embedding worker needs: the raw pool's path (read by row ranges), the
    backbone's files (spec.json + state_dict.pt of the whole network) and the cache directory
    whose shards/ it writes. `done`: the cache was complete when planned."""

    raw_dir: str
    directory: str
    key: str
    backbone_hash: str
    count: int
    feature_shape: tuple[int, ...]
    done: bool

    @property
    def backbone_dir(self) -> Path:
        return Path(self.directory) / BACKBONE_DIR


def campaign_backbone(config: Config, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The campaign's whole network, built once from the campaign seed (its own stream): the
    backbone whose features every round's head is trained and scored on."""
    from baldflow.compute.fitting import campaign_model

    generator = generator_for(config.campaign.seed, STREAM_BACKBONE)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    model = campaign_model(config, input_shape, num_classes, seed, part="whole")
    if getattr(model, "split", "traced") == "whole-module" or isinstance(
        model.prefix, torch.nn.Identity
    ):
        raise ValueError(
            f"model.freeze is backbone but model {config.model.name!r} has no part before its "
            "first dropout to freeze (the whole network runs K times); fix: name the head with "
            "model.head, or --set model.freeze=none"
        )
    return model.eval()


def backbone_hash(model: Any) -> str:
    """sha256 of what decides the features: the network's spec and the prefix's weights."""
    digest = hashlib.sha256()
    digest.update(json.dumps(getattr(model, "spec", {}), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.prefix.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def features_key(config: Config, backbone: str, pool_sha256: str, data: CampaignPool) -> str:
    """The cache key: backbone, pool content, validation and test sets, preprocessing."""
    preprocessing = {
        "source": config.data.source, "repeat": config.data.repeat,
        "noise_std": config.data.noise_std, "options": config.data.options,
        "embed_chunk": EMBED_CHUNK,
    }  # fmt: skip
    parts = {
        "backbone": backbone,
        "pool": pool_sha256,
        "val": spill_key(*data.evaluation_set("val"), (), data.class_names),
        "test": spill_key(*data.evaluation_set("test"), (), data.class_names),
        "preprocessing": preprocessing,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def plan_features(
    config: Config, data: CampaignPool, raw_dir: str | Path, features_root: str | Path
) -> FeatureJob:
    """The features job of this campaign's pool and backbone: its key, and whether the cache
    already holds it. A new job writes the backbone's files for the workers."""
    from baldflow.models.weights import save_model_files

    backbone = campaign_backbone(config, tuple(data.input_shape), data.num_classes)
    chosen = backbone_hash(backbone)
    raw = open_pool(raw_dir)
    try:
        pool_sha256 = cached_manifest(raw)["sha256"]
        count = raw.count
    finally:
        raw.close()
    key = features_key(config, chosen, pool_sha256, data)
    directory = Path(features_root) / key
    if features_complete(directory):
        meta = json.loads((directory / FEATURES_FILE).read_text(encoding="utf-8"))
        shape = tuple(meta["feature_shape"])
        return FeatureJob(str(raw_dir), str(directory), key, chosen, count, shape, True)
    with torch.inference_mode():
        probe = backbone.prefix(torch.zeros(1, *data.input_shape))
    save_model_files(directory / BACKBONE_DIR, backbone.state_dict(), backbone.spec)
    shape = tuple(int(s) for s in probe.shape[1:])
    return FeatureJob(str(raw_dir), str(directory), key, chosen, count, shape, False)


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """`shards` row ranges covering [0, count), each starting at a multiple of EMBED_CHUNK."""
    chunks = max(1, -(-count // EMBED_CHUNK))
    shards = max(1, min(shards, chunks))
    bounds = [round(i * chunks / shards) * EMBED_CHUNK for i in range(shards + 1)]
    bounds[-1] = count
    return [(a, min(b, count)) for a, b in zip(bounds, bounds[1:], strict=False) if a < b]


def _chunks(start: int, stop: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, EMBED_CHUNK):
        yield a, min(a + EMBED_CHUNK, stop)


def load_backbone(job: FeatureJob) -> torch.nn.Module:
    """The backbone (the network's prefix) a worker embeds with, in eval mode on the CPU."""
    from baldflow.models.building import rebuild_model
    from baldflow.models.weights import SPEC_FILE, WEIGHTS_FILE

    model = rebuild_model(job.backbone_dir / SPEC_FILE, job.backbone_dir / WEIGHTS_FILE)
    return model.prefix.eval()


def _shard_file(job: FeatureJob, start: int, stop: int) -> Path:
    return Path(job.directory) / SHARDS_DIR / f"{start:012d}-{stop:012d}.npy"


def embed_rows(prefix: torch.nn.Module, rows: torch.Tensor) -> np.ndarray:
    """float32 features of `rows` (one chunk), deterministic (eval mode, no graph)."""
    with torch.inference_mode():
        return prefix(rows).float().contiguous().numpy()


def embed_shard(job: FeatureJob, start: int, stop: int) -> str:
    """Embed the raw pool's rows [start, stop) into shards/<start>-<stop>.npy (written
    atomically; a retry finds it done). Returns the file's path."""
    out = _shard_file(job, start, stop)
    if out.is_file():
        return str(out)
    prefix = load_backbone(job)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    # Appended chunk by chunk after the .npy header: memory stays one chunk however large the
    # shard (its features can be many times the size of its raw rows), and no written page is
    # held in a mapping.
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
        "fortran_order": False,
        "shape": (stop - start, *job.feature_shape),
    }
    pool = open_pool(job.raw_dir)
    try:
        with tmp.open("wb") as handle:
            np.lib.format.write_array_header_2_0(handle, header)
            for a, b in _chunks(start, stop):
                handle.write(np.ascontiguousarray(embed_rows(prefix, pool.rows(a, b))).data)
    finally:
        pool.close()
    os.replace(tmp, out)
    return str(out)


def finish_features(job: FeatureJob, data: CampaignPool, ranges: list[tuple[int, int]]) -> str:
    """Assemble the cache: the pool's features from the shards (in order, one at a time), the
    validation and test sets' embedded here, then features.json, written last."""
    directory = Path(job.directory)
    if features_complete(directory):
        return str(directory)
    row_size = int(np.prod(job.feature_shape))
    raw = open_pool(job.raw_dir)
    try:
        with PoolWriter(
            directory / "pool", job.feature_shape, "float32", job.count,
            class_names=list(data.class_names), overwrite=True,
        ) as writer:  # fmt: skip
            for a, b in ranges:
                with _shard_file(job, a, b).open("rb") as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(handle)
                    if shape != (b - a, *job.feature_shape) or dtype != np.float32:
                        raise ValueError(f"shard file {handle.name} holds {shape} {dtype}")
                    for c in range(a, b, ASSEMBLE_ROWS):  # a slice at a time: flat memory
                        d = min(c + ASSEMBLE_ROWS, b)
                        rows = np.fromfile(handle, dtype=np.float32, count=(d - c) * row_size)
                        rows = rows.reshape(d - c, *job.feature_shape)
                        writer.write(rows, raw.labels(c, d).numpy(), raw.ids(c, d))
    finally:
        raw.close()
    prefix = load_backbone(job)
    for part in ("val", "test"):
        x, y = data.evaluation_set(part)
        with PoolWriter(
            directory / part, job.feature_shape, "float32", int(x.shape[0]),
            class_names=list(data.class_names), overwrite=True,
        ) as writer:  # fmt: skip
            for a, b in _chunks(0, int(x.shape[0])):
                ids = [f"{part}-{i}" for i in range(a, b)]
                writer.write(embed_rows(prefix, x[a:b]), y[a:b].numpy(), ids)
    write_json_atomically(
        directory / FEATURES_FILE,
        {
            "key": job.key, "backbone_hash": job.backbone_hash, "count": job.count,
            "feature_shape": list(job.feature_shape), "embed_chunk": EMBED_CHUNK,
        },
    )  # fmt: skip
    shutil.rmtree(directory / SHARDS_DIR, ignore_errors=True)
    return str(directory)


def open_features(job: FeatureJob, data: CampaignPool) -> FeaturePool:
    """The campaign's pool with the cached features as the model's inputs."""
    return FeaturePool(data, job.directory)
