"""Seeds and random streams: where every random draw of a campaign comes from.

The ground floor: every layer may import this module, and it imports nothing of baldflow's.
A round's seed comes from the campaign seed and the round number only; each job inside a round
(training, evaluation, scoring masks, selection, the batch evidence, the labelers' predictions)
draws from its own stream of that seed, so that changing, say, the number of MC samples for
scoring does not change how the model was trained. Sample-level noise is keyed by the sample's
id (`id_hashes`), never by its position, so a pool scored in shards draws what one process
draws.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

# Independent random streams of one round.
STREAM_TRAIN = 0
STREAM_EVALUATE = 1
STREAM_SCORE = 2
STREAM_SELECT = 3
STREAM_EVIDENCE = 4
STREAM_PREDICT = 5
# Not a round's: the campaign's frozen backbone (model.freeze: backbone), initialised once from
# the campaign seed (its layers that a pretrained weights file does not cover).
STREAM_BACKBONE = 6


def round_seed(campaign_seed: int, round_index: int) -> int:
    """The seed of a round, derived from the campaign seed and the round number only."""
    state = np.random.SeedSequence([int(campaign_seed), int(round_index)]).generate_state(1)
    return int(state[0])


def generator_for(seed: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(2)
    value = (int(state[0]) << 32) | int(state[1])
    return torch.Generator().manual_seed(value)


def selection_seed(seed: int) -> int:
    """The seed of the round's per-sample selection noise (`acquisition.sharded.id_gumbel`):
    its own stream of the round seed, so the noise is the same whoever scores which shard."""
    state = np.random.SeedSequence([int(seed), STREAM_SELECT]).generate_state(2)
    return (int(state[0]) << 32) | int(state[1])


# ------------------------------------------------------------------------- keyed id hashes
SEED_BYTES = 16  # the hash key: seeds in [0, 2**128)


def checked_seed(seed, error: type[Exception] = ValueError) -> int:
    """`seed` as an int in [0, 2**128), or `error` naming what was wrong."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise error(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2 ** (8 * SEED_BYTES):
        raise error(f"seed must be in [0, 2**128), got {seed}")
    return seed


def checked_ids(sample_ids, error: type[Exception] = ValueError) -> list[str]:
    """`sample_ids` as a list of strings, or `error` naming the first one that is not."""
    if isinstance(sample_ids, str):
        raise error("sample_ids must be a sequence of strings, got a single string")
    sample_ids = list(sample_ids)
    if all(issubclass(kind, str) for kind in set(map(type, sample_ids))):
        return sample_ids  # the common case, checked at C speed
    for i, sample_id in enumerate(sample_ids):
        if not isinstance(sample_id, str):
            raise error(
                f"sample_ids must be strings, got {type(sample_id).__name__} "
                f"{sample_id!r} at index {i}"
            )
    return sample_ids


def id_hashes(
    seed: int, sample_ids: Sequence[str], error: type[Exception] = ValueError
) -> np.ndarray:
    """64-bit keyed BLAKE2b hash of each id (uint64), keyed by the seed.

    Why keyed: a fresh seed gives independent-looking noise for the same ids every round, and
    the hash of one id never depends on any other id, the order, or the machine. Bad input
    raises `error` (the acquisition maths passes its own SelectionError).
    """
    key = checked_seed(seed, error).to_bytes(SEED_BYTES, "little")
    return keyed_hashes(key, checked_ids(sample_ids, error))


def keyed_hashes(key: bytes, sample_ids: list[str]) -> np.ndarray:
    """id_hashes on checked input: the digest of each id read as a little-endian uint64."""
    copy = hashlib.blake2b(key=key, digest_size=8).copy
    digests = []
    for sample_id in sample_ids:
        h = copy()  # copying the keyed state is faster than re-keying per id
        h.update(sample_id.encode("utf-8"))
        digests.append(h.digest())
    return np.frombuffer(b"".join(digests), dtype="<u8")
