"""EPIG, the expected predictive information gain (Bickford Smith et al., AISTATS 2023).

EPIG(x) = mean over target inputs x* of I(y; y* | x, x*): how much labelling x is expected to
tell about the predictions on inputs we care about, rather than about the weights (BALD).
Pure tensor maths on MC log-probabilities, plus the choice of target ids from the pool.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from baldflow.acquisition.scores import ScoreInputError, checked_log_probs
from baldflow.acquisition.sharded import id_hashes

# Bytes of one [n, C, t, C] float64 joint predictive. The joint is the only object that grows
# with N * T * C^2; capping it bounds memory whatever the pool, the targets or C. Why 2 MB: the
# joint and its log then stay in the CPU caches and their buffers are reused by the allocator;
# on one core 10,000 points x 100 targets (K 20, C 10) took 0.37 s with 1-4 MB chunks and 0.95 s
# with 8-64 MB ones (see benchmarks/epig.py --joint-mb).
DEFAULT_JOINT_BYTES = 2 * 2**20

# Why a derived key: sharded selection keys its Gumbel noise with the round seed itself, so
# targets hashed under the same key would be exactly the ids with the smallest noise, i.e. the
# ids `random` (and low-coldness modes) would never pick. A domain-separated key decorrelates
# the two draws while staying a pure function of the round seed.
_TARGET_DOMAIN = b"baldflow/epig-targets/"
_TARGET_KEY_BYTES = 16  # sharded.id_hashes accepts seeds in [0, 2**128)
_IDS_PER_FLUSH = 65_536  # flat ids are hashed in batches of this many (one numpy pass each)


# ------------------------------------------------------------------------------- validation
def _checked(log_probs: torch.Tensor, name: str) -> torch.Tensor:
    return checked_log_probs(log_probs, name)


def _raise_if_invalid(chunk: torch.Tensor, start: int, name: str) -> None:
    """NaN or +inf log-probabilities are a bug upstream; say where, rather than score them."""
    bad_rows = (torch.isnan(chunk) | (chunk == torch.inf)).flatten(1).any(1)
    if bad_rows.any():
        row = start + int(bad_rows.nonzero()[0])
        raise ScoreInputError(f"{name} contains NaN or +inf (first at index {row})")


def _checked_chunk(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ScoreInputError(f"{name} must be an integer >= 1 or None, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------- the maths
def _entropy_of_probs(probs_n_C: torch.Tensor) -> torch.Tensor:
    # entr(p) = -p log p with entr(0) = 0, so zero probabilities need no special case.
    return torch.special.entr(probs_n_C).sum(-1)


class _Targets:
    """The targets' side of EPIG, computed once: per target chunk the matrix p(y*|x*, w_k) / K
    laid out [K, t * C] for one matmul with the pool, and the sum of the targets' H[y*|x*].

    Why once: a pool is scored chunk by chunk (and by `score_pool` call by call) against the
    same ~100 targets, and their probabilities and entropies do not change between chunks.
    """

    def __init__(self, log_probs_T_K_C: torch.Tensor, target_chunk: int | None, joint_bytes: int):
        log_probs_T_K_C = _checked(log_probs_T_K_C, "log_probs_T_K_C")
        T, K, C = log_probs_T_K_C.shape
        if T < 1:
            raise ScoreInputError(
                f"log_probs_T_K_C needs at least one target input, got shape "
                f"{tuple(log_probs_T_K_C.shape)}"
            )
        log_probs_T_K_C = log_probs_T_K_C.to(torch.float64)
        _raise_if_invalid(log_probs_T_K_C, 0, "log_probs_T_K_C")
        self.T, self.K, self.C = T, K, C
        self.shape = tuple(log_probs_T_K_C.shape)
        pair_bytes = C * C * 8
        if target_chunk is None:
            # All targets at once while one pool row's joint fits the budget: fewest passes.
            target_chunk = max(1, joint_bytes // pair_bytes)
        self.target_chunk = min(T, target_chunk)
        self.pool_rows = max(1, joint_bytes // (self.target_chunk * pair_bytes))
        probs_T_K_C = log_probs_T_K_C.exp()
        self._parts = []
        for start in range(0, T, self.target_chunk):
            probs_t_K_C = probs_T_K_C[start : start + self.target_chunk]
            t = probs_t_K_C.shape[0]
            # The 1/K of the joint's mean over samples is folded in here, once.
            matrix_K_tC = (probs_t_K_C / K).permute(1, 0, 2).reshape(K, t * C).contiguous()
            entropy_sum = float(_entropy_of_probs(probs_t_K_C.mean(1)).sum())
            self._parts.append((t, matrix_K_tC, entropy_sum))
        self._on_device: dict[torch.device, list] = {}

    def parts(self, device: torch.device) -> list:
        if device not in self._on_device:
            self._on_device[device] = [
                (t, matrix.to(device), entropy_sum) for t, matrix, entropy_sum in self._parts
            ]
        return self._on_device[device]


def _information_sums(log_probs_n_K_C: torch.Tensor, targets: _Targets) -> torch.Tensor:
    """sum over all targets x* of I(y; y* | x, x*) for each row: float64 [n].

    I = H[y] + H[y*] - H[y, y*], so the sum over targets is T H[y] + sum H[y*] + sum_{t,y,y*}
    p log p of the joint: the joint's part is one dot product per row over [C, t, C], with no
    per-target intermediate. Everything is float64 probabilities; the cancellation of the three
    entropies costs about 1e-15 per target, far below the values that rank a pool.
    """
    n, K, C = log_probs_n_K_C.shape
    probs_n_K_C = log_probs_n_K_C.exp()
    sums_n = _entropy_of_probs(probs_n_K_C.mean(1)) * targets.T
    probs_nC_K = probs_n_K_C.transpose(1, 2).reshape(n * C, K)
    tiny = torch.finfo(torch.float64).tiny
    for t, matrix_K_tC, entropy_sum in targets.parts(log_probs_n_K_C.device):
        # joint[n, y, t, y*] = (1/K) sum_k p(y|x_n, w_k) p(y*|x*_t, w_k)
        joint = probs_nC_K @ matrix_K_tC
        # Clamping 0 to the smallest normal double makes 0 * log 0 come out 0 * finite = 0.
        log_joint = joint.clamp_min(tiny).log_()
        sum_p_log_p = torch.bmm(joint.view(n, 1, C * t * C), log_joint.view(n, C * t * C, 1))
        sums_n += sum_p_log_p.view(n) + entropy_sum
    return sums_n


def _epig(log_probs_N_K_C: torch.Tensor, targets: _Targets, pool_chunk: int | None):
    log_probs_N_K_C = _checked(log_probs_N_K_C, "log_probs_N_K_C")
    if log_probs_N_K_C.shape[1:] != targets.shape[1:]:
        raise ScoreInputError(
            f"log_probs_N_K_C and log_probs_T_K_C must have the same K (MC samples) and C "
            f"(classes), got shapes {tuple(log_probs_N_K_C.shape)} and {targets.shape}"
        )
    N = log_probs_N_K_C.shape[0]
    scores_N = torch.empty(N, dtype=torch.float64, device=log_probs_N_K_C.device)
    step = pool_chunk or targets.pool_rows
    for start in range(0, N, step):
        chunk = log_probs_N_K_C[start : start + step].to(torch.float64)
        _raise_if_invalid(chunk, start, "log_probs_N_K_C")
        if targets.K == 1:
            # One sample: the joint is the product of its marginals, so I is exactly 0, not
            # rounding noise that would still rank the pool.
            scores_N[start : start + step] = 0.0
            continue
        scores_N[start : start + step] = _information_sums(chunk, targets) / targets.T
    # Each I(y; y*) >= 0 mathematically; rounding can push the mean a hair below zero.
    return scores_N.clamp_min_(0.0)


def epig_scores(
    log_probs_N_K_C: torch.Tensor,
    log_probs_T_K_C: torch.Tensor,
    *,
    target_chunk: int | None = None,
    pool_chunk: int | None = None,
) -> torch.Tensor:
    """EPIG of each pool point against the target inputs: float64 [N], >= 0, never NaN.

    EPIG(x) = (1/T) sum_t [H[p(y|x)] + H[p(y*|x*_t)] - H[p(y, y*|x, x*_t)]], the joint
    p(y, y*|x, x*) = (1/K) sum_k p(y|x, w_k) p(y*|x*, w_k). The k-th MC sample of the pool and of
    the targets must be the same weights w_k (the same consistent dropout masks), otherwise the
    joint is not the model's and EPIG measures mask noise.

    Streamed: targets `target_chunk` at a time (None: as many as keep one pool row's joint
    within DEFAULT_JOINT_BYTES, usually all) and pool rows `pool_chunk` at a time (None: as many
    as the budget allows), so memory is O(pool_chunk * target_chunk * C^2) whatever N and T.
    Time is O(N T K C^2). Computed in float64 from log-probs of any float dtype.
    """
    targets = _Targets(
        log_probs_T_K_C, _checked_chunk(target_chunk, "target_chunk"), DEFAULT_JOINT_BYTES
    )
    return _epig(log_probs_N_K_C, targets, _checked_chunk(pool_chunk, "pool_chunk"))


def epig_score_function(
    log_probs_T_K_C: torch.Tensor, *, target_chunk: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A score function of `log_probs_N_K_C` alone, for `inference.score_pool(score=...)` and
    anything else that takes a score of log-probs: EPIG against these fixed targets.

    Why a closure: the targets are validated and turned into probabilities and entropies once,
    not for every chunk of the pool. Their log-probs must come from the same K masks that the
    pool is scored with (e.g. a generator in the same state as the one `score_pool` gets).
    """
    targets = _Targets(
        log_probs_T_K_C, _checked_chunk(target_chunk, "target_chunk"), DEFAULT_JOINT_BYTES
    )

    def epig(log_probs_N_K_C: torch.Tensor) -> torch.Tensor:
        return _epig(log_probs_N_K_C, targets, None)

    return epig


# ----------------------------------------------------------------------------- target inputs
def target_seed(seed: int) -> int:
    """The hash key of the target draw: the first 16 bytes (little-endian) of
    BLAKE2b(b"baldflow/epig-targets/" + decimal seed), an int in [0, 2**128).

    Never the round seed itself (see _TARGET_DOMAIN): the targets must not be the ids with the
    smallest selection noise.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    digest = hashlib.blake2b(
        _TARGET_DOMAIN + str(int(seed)).encode("ascii"), digest_size=_TARGET_KEY_BYTES
    ).digest()
    return int.from_bytes(digest, "little")


class _Smallest:
    """The `count` smallest (hash, id) pairs seen so far, each id once: O(count) state."""

    def __init__(self, key: int, count: int):
        self.key, self.count = key, count
        self.kept: list[tuple[int, str]] = []  # ascending

    def add(self, ids: list[str]) -> None:
        if not ids or self.count == 0:
            return
        hashes = id_hashes(self.key, ids)
        if len(self.kept) == self.count:
            # Most ids of a large pool lose to the current count-th smallest: drop them in numpy.
            (positions,) = np.nonzero(hashes <= np.uint64(self.kept[-1][0]))
        elif len(ids) > self.count:
            kth = np.partition(hashes, self.count - 1)[self.count - 1]
            (positions,) = np.nonzero(hashes <= kth)  # <=: ties at the cut all stay in
        else:
            positions = range(len(ids))
        if len(positions) == 0:
            return
        # A set of pairs: an id seen twice has the same hash, so it is kept once.
        pairs = set(self.kept)
        pairs.update((int(hashes[i]), ids[i]) for i in positions)
        self.kept = heapq.nsmallest(self.count, pairs)


def target_ids(
    seed: int, sample_ids: Iterable[str] | Iterable[Sequence[str]], count: int
) -> list[str]:
    """The `count` sample ids with the smallest keyed hash under `target_seed(seed)`, in
    ascending hash order (ties, never seen in 64 bits, by the smaller id): EPIG's targets x*.

    Why hashes: a uniform sample of the pool without replacement that depends only on the seed
    and the set of ids, never on their order, the sharding or the chunking, so every worker
    and a re-run pick the same targets. `sample_ids` may be ids, or chunks of ids (lists,
    tuples or arrays of str), or both mixed; only O(count) ids are kept, so a pool's ids can be
    streamed. A repeated id counts once. count >= the number of distinct ids returns them all.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be an integer >= 0, got {count!r}")
    if isinstance(sample_ids, (str, bytes)):
        raise ValueError("sample_ids must be an iterable of ids or of chunks of ids, got a string")
    smallest = _Smallest(target_seed(seed), int(count))
    buffer: list[str] = []
    for item in sample_ids:
        if isinstance(item, str):
            buffer.append(item)
            if len(buffer) >= _IDS_PER_FLUSH:
                smallest.add(buffer)
                buffer = []
        elif isinstance(item, (Sequence, np.ndarray)) and not isinstance(item, bytes):
            # id_hashes refuses anything in the chunk that is not a str, naming it.
            smallest.add(list(item))
        else:
            raise ValueError(
                f"sample_ids must hold str ids or chunks of str ids, got {type(item).__name__} "
                f"{item!r}"
            )
    smallest.add(buffer)
    # str(): ids from a numpy chunk are np.str_, which is a str but prints differently.
    return [str(sample_id) for _, sample_id in smallest.kept]
