"""CoreSet and BADGE on a pool scored in shards: each shard sends a few rows, a merge picks.

Why: score-based strategies merge shards exactly from b candidates a shard (`picks`,
`annealed`), but CoreSet and BADGE pick by distances between pool rows, so a pick depends on
every earlier pick. Shipping the whole pool's features to one process would undo the sharding;
these functions send a few rows per shard instead.

CoreSet (exact, by certificate). A pass: every shard ranks its rows (those not yet picked) by
their min squared distance to the labeled rows and the picks certified so far, largest first,
ties by the lower global position (the order `coreset` picks in), and sends its first m rows
plus the key (value, position) of its first row NOT sent, its bound. The merge replays greedy
k-center on the union of the proposals and accepts a pick only while it ranks strictly ahead of
every shard's bound: a row's value only shrinks as centers are added, so no unsent row can then
outrank it, and the pick is the one `coreset` on the whole pool makes. A pick that fails the
test ends the pass; the next pass starts from the certified picks. Every pass certifies at least
one pick (the best remaining row is its shard's first), so at most b passes are needed. With a
labeled set spread over the data one or two passes suffice; with none, the first pass is for
the pool's mean and the second for the first pick, and while the centers are few the top m of
every shard crowd into the region farthest from them, so each pass certifies only a few picks
(benchmarks/diverse_shards.py). `local_greedy` proposals (each shard's own k-center sequence
too) remove that for a single shard, not across shards. Exact here means the same float64
values as `coreset` (the same distance functions), with one caveat: a pool with no labeled rows
places its first pick by the mean, summed per shard, which may differ from torch's mean of the
whole pool in the last bits (see `pool_mean`).

BADGE (approximate, gap measured). Exact k-means++ seeding needs a pass per pick (each draw's
weights depend on every earlier pick), so each shard proposes m rows by its own k-means++
seeding and the merge seeds over their union. The first pick stays exact (the pool's
largest-norm row is its shard's first pick); the rest are D^2 draws within the candidates, whose
quality against the one process is measured by `kmeans_potential`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from baldflow.acquisition.badge import (
    _check_batch_size,
    _check_matrix,
    badge,
    squared_distances_to,
)
from baldflow.acquisition.coreset import _min_squared_distances

# A proposal's reference: what its values measure the distance to.
CENTERS = "centers"  # the labeled rows and the certified picks
MEAN = "mean"  # the pool's mean: the first pick of a pool with no labeled rows
NONE = "none"  # nothing yet: a pool with no labeled rows sends its sums for the mean first


# ------------------------------------------------------------------------------ checks
def _check_candidates(candidates) -> int:
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an integer >= 1, got {candidates!r}")
    return candidates


def _check_positions(name: str, positions_N, rows: int) -> torch.Tensor:
    """Global pool row positions of a shard's rows: int64, 1-D, one per row, >= 0, increasing
    (the shard's rows in pool order, which is what makes "lowest index" mean "lowest position")."""
    if not isinstance(positions_N, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(positions_N).__name__}")
    if positions_N.dtype != torch.int64 or positions_N.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D int64 tensor, got dtype {positions_N.dtype} and shape "
            f"{tuple(positions_N.shape)}"
        )
    if positions_N.numel() != rows:
        raise ValueError(f"{name} has {positions_N.numel()} positions for {rows} rows")
    if rows and int(positions_N.min()) < 0:
        raise ValueError(f"{name} must be >= 0 (global pool row positions)")
    if rows > 1 and not bool((positions_N[1:] > positions_N[:-1]).all()):
        raise ValueError(f"{name} must be strictly increasing (the shard's rows in pool order)")
    return positions_N


def _check_width(name: str, tensor_N_D: torch.Tensor, width: int) -> None:
    if tensor_N_D.shape[1] != width:
        raise ValueError(
            f"{name} has {tensor_N_D.shape[1]} features per row but the shard's rows have "
            f"{width}; both must come from the same embedding"
        )


def _ranked(values_n: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the first k entries in the order (value descending, index ascending), in
    that order, in O(n): topk finds the k-th value, and the ties at it go to the lower indices
    (topk alone would leave which of them it keeps unstated)."""
    k = min(k, values_n.numel())
    if k == 0:
        return torch.empty(0, dtype=torch.long)
    kth = torch.topk(values_n, k).values[-1]
    above = (values_n > kth).nonzero().flatten()
    tied = (values_n == kth).nonzero().flatten()[: k - above.numel()]
    chosen = torch.cat([above, tied]).sort().values
    return chosen[torch.sort(values_n[chosen], descending=True, stable=True).indices]


def _first_max(values_n: torch.Tensor) -> int:
    return int((values_n == values_n.max()).nonzero()[0, 0])


# ------------------------------------------------------------------------------ CoreSet
@dataclass(frozen=True)
class CoresetRequest:
    """What one pass broadcasts to every shard: the picks certified so far, in pick order
    (their global positions `positions_P`, int64, and features `features_P_D`; P may be 0, and
    then `features_P_D` may have any width), the number of rows each shard proposes, and, only
    for the first pick of a pool with no labeled rows, the pool's mean `mean_D` (float64).
    `local_greedy`: also send the shard's own greedy k-center sequence (see `CoresetProposal`).

    The positions travel with the features because a shard must leave out its own certified
    rows, and features alone cannot tell a certified row from an unpicked duplicate of it (both
    at distance 0), which `coreset` may still pick later."""

    positions_P: torch.Tensor
    features_P_D: torch.Tensor
    candidates: int
    mean_D: torch.Tensor | None = None
    local_greedy: bool = False


@dataclass(frozen=True)
class CoresetProposal:
    """One shard's answer to a `CoresetRequest`: its first m unpicked rows in the order
    (value descending, position ascending), their positions, features and float64 values (min
    squared distance to the reference: see `reference`), and the key of its first row not sent:
    `bound_value` (-inf when every row was sent) and `bound_position` (-1 then). `count` is the
    number of rows in the shard, picked or not; `feature_sum_D` (float64) is sent only in the
    pass for the mean (reference "none", no rows).

    With `local_greedy` the shard also runs greedy k-center on its own rows for m picks and
    sends those rows too (so up to 2m rows): `greedy_positions_g` in its pick order, and
    `greedy_keys_g1`, g + 1 keys (value, position): key k is that of its (k+1)-th local pick,
    the last one that of its best row left after all g (-inf, -1 if none). Once the merge has
    picked the shard's first k local picks, every row the shard did not send ranks strictly
    behind key k (its value, measured from those k among others, is at most that pick's): a
    second bound, tight where the top m crowd into one region (few centers, clustered rows)
    while the next pick is elsewhere, as long as the merge keeps taking the shard's own local
    picks in order (so it helps most with one shard, or shards that each hold a region)."""

    positions_m: torch.Tensor
    features_m_D: torch.Tensor
    values_m: torch.Tensor
    bound_value: float
    bound_position: int
    count: int
    reference: str
    feature_sum_D: torch.Tensor | None = None
    greedy_positions_g: torch.Tensor | None = None
    greedy_keys_g1: tuple[tuple[float, int], ...] = ()


class CoresetMerge(NamedTuple):
    """The certified picks after a merge (all of them, in pick order: positions, features),
    whether the batch is complete (min(batch_size, pool rows) picks), and how many picks this
    merge added."""

    positions_P: torch.Tensor
    features_P_D: torch.Tensor
    complete: bool
    added: int


class ShardedCoreset(NamedTuple):
    """The batch as global positions in pick order, the number of passes over the shards
    (calls of `propose`), and whether every pick was certified (True: the batch is `coreset`'s
    on the whole pool)."""

    positions: torch.Tensor
    passes: int
    certified: bool


def first_request(candidates: int, local_greedy: bool = False) -> CoresetRequest:
    """The request of the first pass: nothing certified yet."""
    return CoresetRequest(
        torch.empty(0, dtype=torch.long), torch.empty(0, 0), _check_candidates(candidates),
        None, bool(local_greedy),
    )  # fmt: skip


def _local_greedy(
    features_n_D: torch.Tensor, positions_n: torch.Tensor, values_n: torch.Tensor, picks: int
) -> tuple[torch.Tensor, tuple[tuple[float, int], ...]]:
    """Greedy k-center within the rows given, from their values (as `coreset`, ties to the
    lower position): the first `picks` local indices in pick order, and the key (value,
    position) of each pick at its step plus that of the next row (-inf, -1 if none is left)."""
    values_n = values_n.clone()
    chosen: list[int] = []
    keys: list[tuple[float, int]] = []
    while True:
        if len(chosen) == values_n.numel():
            keys.append((-math.inf, -1))
            break
        best = _first_max(values_n)
        keys.append((float(values_n[best]), int(positions_n[best])))
        if len(chosen) == picks:
            break
        chosen.append(best)
        distances_n = squared_distances_to(features_n_D, features_n_D[best])
        torch.minimum(values_n, distances_n, out=values_n)
        values_n[chosen] = -1.0  # below every distance: never chosen twice
    return torch.tensor(chosen, dtype=torch.long), tuple(keys)


def coreset_shard_proposal(
    features_N_D: torch.Tensor,
    positions_N: torch.Tensor,
    labeled_features_L_D: torch.Tensor | None,
    request: CoresetRequest,
) -> CoresetProposal:
    """This shard's proposal for one pass of `coreset_in_shards`.

    `features_N_D`: the shard's unlabeled rows (N may be 0); `positions_N`: their global
    positions (int64, increasing); `labeled_features_L_D`: the labeled rows (the same on every
    shard; None or 0 rows for none). The values are computed exactly as `coreset` computes them
    (float64, the same functions), so the merge compares the same numbers the one process does.

    With no labeled rows and nothing certified there is nothing to measure from: without the
    mean the shard sends only its feature sum and count (reference "none"); given the mean it
    ranks its rows by their squared distance to it (reference "mean"), for the first pick.
    Cost: O(N (L + P) D) per pass (a worker could keep the min distances between passes).
    """
    _check_matrix("features_N_D", features_N_D)
    n, d = features_N_D.shape
    _check_positions("positions_N", positions_N, n)
    candidates = _check_candidates(request.candidates)
    has_labeled = labeled_features_L_D is not None and labeled_features_L_D.shape[0] > 0
    if labeled_features_L_D is not None:
        _check_matrix("labeled_features_L_D", labeled_features_L_D, "L x D")
        _check_width("labeled_features_L_D", labeled_features_L_D, d)
    certified_P_D = request.features_P_D
    _check_matrix("request.features_P_D", certified_P_D, "P x D")
    p = certified_P_D.shape[0]
    if p:
        _check_width("request.features_P_D", certified_P_D, d)
    if request.positions_P.dtype != torch.int64 or request.positions_P.shape != (p,):
        raise ValueError(
            f"request.positions_P must be {p} int64 positions (one per certified row), got "
            f"dtype {request.positions_P.dtype} and shape {tuple(request.positions_P.shape)}"
        )

    if has_labeled or p:
        reference = CENTERS
        # One blocked pass over labeled and certified rows together: per pair the same float64
        # sum of squared differences as `squared_distances_to`, which `coreset` uses per pick.
        # float64 (as `_min_squared_distances` reads both) loses nothing of either input.
        parts = [labeled_features_L_D] if has_labeled else []
        parts += [certified_P_D] if p else []
        centers_C_D = torch.cat([part.to(torch.float64) for part in parts])
        values_N = _min_squared_distances(features_N_D, centers_C_D)
    elif request.mean_D is None:
        return CoresetProposal(
            torch.empty(0, dtype=torch.long), features_N_D[:0].clone(),
            torch.empty(0, dtype=torch.float64), -math.inf, -1, n, NONE,
            features_N_D.to(torch.float64).sum(dim=0),
        )  # fmt: skip
    else:
        mean_D = request.mean_D
        if not isinstance(mean_D, torch.Tensor) or mean_D.shape != (d,):
            raise ValueError(f"request.mean_D must be a tensor of shape ({d},)")
        reference = MEAN
        values_N = squared_distances_to(features_N_D, mean_D)

    unpicked_n = (~torch.isin(positions_N, request.positions_P)).nonzero().flatten()
    order = unpicked_n[_ranked(values_N[unpicked_n], candidates + 1)]
    sent = order[:candidates]
    if order.numel() > candidates:
        bound_value, bound_position = float(values_N[order[-1]]), int(positions_N[order[-1]])
    else:
        bound_value, bound_position = -math.inf, -1
    greedy_positions_g, greedy_keys = None, ()
    # From the mean the next centers are the picks, not the mean: no local sequence then.
    if request.local_greedy and reference == CENTERS:
        local_g, greedy_keys = _local_greedy(
            features_N_D[unpicked_n], positions_N[unpicked_n], values_N[unpicked_n], candidates
        )
        greedy_positions_g = positions_N[unpicked_n[local_g]]
        sent = torch.cat([sent, unpicked_n[local_g]]).unique()  # sorted: in position order
    return CoresetProposal(
        positions_N[sent].clone(), features_N_D[sent].clone(), values_N[sent].clone(),
        bound_value, bound_position, n, reference, None, greedy_positions_g, greedy_keys,
    )  # fmt: skip


def _check_proposals(proposals: Sequence[CoresetProposal]) -> str:
    if isinstance(proposals, CoresetProposal) or not isinstance(proposals, Sequence):
        raise ValueError("proposals must be a sequence of CoresetProposal, one per shard")
    if not proposals:
        raise ValueError("proposals is empty: every pass needs one proposal per shard")
    for proposal in proposals:
        if not isinstance(proposal, CoresetProposal):
            raise ValueError(f"proposals must be CoresetProposal, got {type(proposal).__name__}")
    references = {proposal.reference for proposal in proposals}
    if len(references) != 1:
        raise ValueError(f"the shards answered different requests: references {references}")
    return references.pop()


def pool_mean(proposals: Sequence[CoresetProposal]) -> torch.Tensor:
    """The pool's mean feature (float64) from the shards' sums and counts (reference "none").

    `coreset` takes torch's mean of the whole pool; summing per shard rounds in another order,
    so the two means may differ in the last bits, and the first pick could differ only where
    two rows' distances to the mean agree to rounding (exact duplicates always tie, and go to
    the lower position either way)."""
    if _check_proposals(proposals) != NONE:
        raise ValueError("pool_mean needs the proposals of the pass for the mean")
    count = sum(proposal.count for proposal in proposals)
    if count == 0:
        raise ValueError("the pool has no rows: it has no mean")
    widths = {tuple(proposal.feature_sum_D.shape) for proposal in proposals}
    if len(widths) != 1:
        raise ValueError(f"the shards' feature sums have different shapes: {widths}")
    return torch.stack([proposal.feature_sum_D for proposal in proposals]).sum(dim=0) / count


def _ahead(key: tuple[float, int], bound: tuple[float, int]) -> bool:
    """Whether a pick's key (value, position) ranks strictly ahead of a bound key: a larger
    value, or the same value at a lower position (the order `coreset` picks in)."""
    return key[0] > bound[0] or (key[0] == bound[0] and key[1] < bound[1])


def _certified(key: tuple[float, int], bound: tuple[float, int]) -> bool:
    """Whether a pick passes a bound: ahead of it, or its very row. A bound that is the key of
    an unsent row can never be the pick's (every pick was sent), so there this is "strictly
    ahead"; a local greedy key may be that of a sent row, the shard's next local pick, and
    every unsent row ranks strictly behind it, so the pick may be that row itself."""
    return key == bound or _ahead(key, bound)


def _bounds(proposals: Sequence[CoresetProposal], prefixes: list[int]) -> list[tuple[float, int]]:
    """Per shard, a key that no row it did not send can rank ahead of: the first unsent row of
    its top m, or, for a local greedy proposal whose first `prefixes[t]` local picks the merge
    has taken, the lower of that and the key of its next local pick (both bounds hold, so the
    lower one does). A pick ranked ahead of every shard's key is certified."""
    bounds = []
    for proposal, prefix in zip(proposals, prefixes, strict=True):
        bound = (proposal.bound_value, proposal.bound_position)
        if proposal.greedy_positions_g is not None:
            after_prefix = proposal.greedy_keys_g1[prefix]
            bound = bound if _ahead(after_prefix, bound) else after_prefix
        bounds.append(bound)
    return bounds


def merge_coreset_proposals(
    proposals: Sequence[CoresetProposal],
    request: CoresetRequest,
    batch_size: int,
    certify: bool = True,
) -> CoresetMerge:
    """Greedy k-center over the union of one pass's proposals, from the picks in `request`.

    Each next pick is the union's row with the largest value (ties: lowest position), then the
    values are lowered by their squared distance to it, as in `coreset`. With `certify` a pick is
    accepted only while its key (value, position) ranks strictly ahead of every shard's bound
    (larger value, or equal value and lower position; or is the key itself, for a local greedy
    bound that names a sent row); the first that does not ends the merge.
    `certify=False` finishes greedily over the union (the batch then may not be `coreset`'s).
    A pass ranked by the mean gives one pick (the next picks measure from it, not the mean);
    the pass for the mean gives none. The result does not depend on the order of `proposals`.
    """
    reference = _check_proposals(proposals)
    batch_size = _check_batch_size(batch_size)
    target = min(batch_size, sum(proposal.count for proposal in proposals))
    certified_P = request.positions_P
    certified_P_D = request.features_P_D
    if reference == NONE:
        return CoresetMerge(certified_P, certified_P_D, certified_P.numel() >= target, 0)
    widths = {proposal.features_m_D.shape[1] for proposal in proposals}
    if len(widths) != 1 or (certified_P.numel() and certified_P_D.shape[1] not in widths):
        raise ValueError("the proposals' and the certified picks' features differ in width")
    positions_U = torch.cat([proposal.positions_m for proposal in proposals])
    features_U_D = torch.cat([proposal.features_m_D for proposal in proposals])
    values_U = torch.cat([proposal.values_m for proposal in proposals]).clone()
    if positions_U.unique().numel() != positions_U.numel():
        raise ValueError("two proposals share a position: the shards overlap")
    if bool(torch.isin(positions_U, certified_P).any()):
        raise ValueError("a proposal holds a row that is already certified")
    # In position order, so "first max" is "lowest position" and the order of shards is moot.
    by_position = positions_U.argsort()
    positions_U, features_U_D, values_U = (
        positions_U[by_position], features_U_D[by_position], values_U[by_position]
    )  # fmt: skip
    # Per shard, how many of its local greedy picks lead the merge's picks (see the proposal).
    sequences = [
        [] if p.greedy_positions_g is None else p.greedy_positions_g.tolist() for p in proposals
    ]
    for proposal, sequence in zip(proposals, sequences, strict=True):
        if proposal.greedy_positions_g is not None and (
            len(proposal.greedy_keys_g1) != len(sequence) + 1
        ):
            raise ValueError("a proposal's greedy_keys_g1 must have one key more than its picks")
    prefixes = [0] * len(proposals)
    wanted = min(target - certified_P.numel(), 1 if reference == MEAN else target)
    picked: list[int] = []
    picked_positions: set[int] = set()
    while len(picked) < wanted and len(picked) < positions_U.numel():
        best = _first_max(values_U)
        key = (float(values_U[best]), int(positions_U[best]))
        if certify and not all(_certified(key, b) for b in _bounds(proposals, prefixes)):
            break
        picked.append(best)
        picked_positions.add(key[1])
        for t, sequence in enumerate(sequences):
            while prefixes[t] < len(sequence) and sequence[prefixes[t]] in picked_positions:
                prefixes[t] += 1
        if reference == CENTERS:
            distances_U = squared_distances_to(features_U_D, features_U_D[best])
            torch.minimum(values_U, distances_U, out=values_U)
        # Below every real distance (>= 0), so a picked row is never taken twice.
        values_U[picked] = -1.0
    index = torch.tensor(picked, dtype=torch.long)
    new_P_D = features_U_D[index]
    if certified_P.numel():
        new_P_D = torch.cat([certified_P_D.to(new_P_D.dtype), new_P_D])
    positions_P = torch.cat([certified_P, positions_U[index]])
    return CoresetMerge(positions_P, new_P_D, positions_P.numel() >= target, len(picked))


def coreset_in_shards(
    propose: Callable[[CoresetRequest], Sequence[CoresetProposal]],
    batch_size: int,
    candidates: int,
    max_passes: int | None = None,
    local_greedy: bool = False,
) -> ShardedCoreset:
    """`coreset` on a pool held in shards: the same positions in the same order.

    `propose(request)` runs one pass: `coreset_shard_proposal` on every shard (in a real
    round, a model pass on the workers) and returns their proposals, one per shard, in any
    order. Each pass certifies at least one pick, so the batch is complete after at most
    batch_size passes (two more for a pool with no labeled rows: one for the mean, one for the
    first pick, which is measured from the mean rather than from the picks). After `max_passes`
    (None: no limit) the batch is finished greedily over the last pass's proposals, with
    `certified` False; it is shorter than min(batch_size, pool rows) if those run out.

    `local_greedy=True` has each shard also send its own greedy k-center sequence of m rows
    (up to 2m rows a shard), whose keys bound the unsent rows more tightly once the merge has
    picked a prefix of it: the same batch, in fewer passes where the top m of a shard crowd
    into one cluster (a pool with no labeled rows) and one shard holds the pool; across shards
    holding mixed rows the merge seldom takes a shard's local picks in order, and
    benchmarks/diverse_shards.py measured no gain there.
    """
    batch_size = _check_batch_size(batch_size)
    request = first_request(candidates, local_greedy)
    if max_passes is not None and (
        isinstance(max_passes, bool) or not isinstance(max_passes, int) or max_passes < 1
    ):
        raise ValueError(f"max_passes must be None or an integer >= 1, got {max_passes!r}")
    passes = 0
    last: tuple[Sequence[CoresetProposal], CoresetRequest] | None = None
    while max_passes is None or passes < max_passes:
        proposals = list(propose(request))
        passes += 1
        if _check_proposals(proposals) == NONE:
            if sum(proposal.count for proposal in proposals) == 0:
                return ShardedCoreset(torch.empty(0, dtype=torch.long), passes, True)
            request = CoresetRequest(
                request.positions_P, request.features_P_D, request.candidates,
                pool_mean(proposals), request.local_greedy,
            )  # fmt: skip
            continue
        merged = merge_coreset_proposals(proposals, request, batch_size)
        if merged.complete:
            return ShardedCoreset(merged.positions_P, passes, True)
        last = (proposals, request)
        request = CoresetRequest(
            merged.positions_P, merged.features_P_D, request.candidates, None,
            request.local_greedy,
        )  # fmt: skip
    if last is None:
        return ShardedCoreset(request.positions_P, passes, False)
    merged = merge_coreset_proposals(last[0], last[1], batch_size, certify=False)
    return ShardedCoreset(merged.positions_P, passes, False)


# ------------------------------------------------------------------------------ BADGE
@dataclass(frozen=True)
class BadgeProposal:
    """One shard's candidates for BADGE: global positions (int64) and gradient embeddings of
    the rows its own k-means++ seeding picked, in its pick order, and how many rows the shard
    has (so the merge can tell a short union from a small pool)."""

    positions_m: torch.Tensor
    embeddings_m_E: torch.Tensor
    count: int


class ShardedBadge(NamedTuple):
    """The batch as global positions in pick order, and float64 probabilities: the chance
    each pick had at its step of the merge's seeding, within the candidates (1 for the first)."""

    positions: torch.Tensor
    probabilities: torch.Tensor


def shard_seed(seed: int, first_position: int) -> int:
    """The generator seed of the shard whose first row is at `first_position`, for a selection
    under `seed`: a hash of both, so a shard's candidates do not depend on which worker, or in
    which order, ran it, and two shards (or two rounds) never share a stream."""
    digest = hashlib.blake2b(f"badge-shard/{seed}/{first_position}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1  # < 2**63: any torch accepts it


def badge_shard_proposal(
    embeddings_N_E: torch.Tensor, positions_N: torch.Tensor, candidates: int, seed: int
) -> BadgeProposal:
    """This shard's `candidates` rows by `badge` on its own gradient embeddings, with a
    generator seeded by `shard_seed(seed, first position)`. Its first pick is its largest-norm
    row (lowest position among equals), so the pool's largest-norm row is always proposed."""
    _check_matrix("embeddings_N_E", embeddings_N_E, "N x E")
    _check_positions("positions_N", positions_N, embeddings_N_E.shape[0])
    candidates = _check_candidates(candidates)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    n = embeddings_N_E.shape[0]
    if n == 0:
        return BadgeProposal(positions_N.clone(), embeddings_N_E.clone(), 0)
    generator = torch.Generator().manual_seed(shard_seed(seed, int(positions_N[0])))
    rows = badge(embeddings_N_E, candidates, generator)
    return BadgeProposal(positions_N[rows].clone(), embeddings_N_E[rows].clone(), n)


def merge_badge_proposals(
    proposals: Sequence[BadgeProposal], batch_size: int, generator: torch.Generator
) -> ShardedBadge:
    """`badge` over the union of the shards' candidates with the round's generator.

    The union is put in position order first, so the batch does not depend on the order of
    `proposals`, and `badge`'s first pick (largest norm, lowest index among equals) is the
    pool's largest-norm row at its lowest position: the first pick of `badge` on the whole
    pool. The later picks are D^2 draws among the candidates only (see `kmeans_potential`).
    A union smaller than min(batch_size, pool rows) is refused (candidates too few for the
    batch, e.g. one shard proposing m < b) rather than returning a short batch."""
    if isinstance(proposals, BadgeProposal) or not isinstance(proposals, Sequence):
        raise ValueError("proposals must be a sequence of BadgeProposal, one per shard")
    if not proposals or not all(isinstance(p, BadgeProposal) for p in proposals):
        raise ValueError("proposals must be a non-empty sequence of BadgeProposal")
    batch_size = _check_batch_size(batch_size)
    widths = {p.embeddings_m_E.shape[1] for p in proposals if p.embeddings_m_E.shape[0]}
    if len(widths) > 1:
        raise ValueError(f"the shards' embeddings have different widths: {sorted(widths)}")
    nonempty = [p for p in proposals if p.positions_m.numel()]
    union = sum(p.positions_m.numel() for p in proposals)
    wanted = min(batch_size, sum(p.count for p in proposals))
    if union < wanted:
        raise ValueError(
            f"the shards proposed {union} rows in all for a batch of {wanted}: propose at least "
            f"ceil({wanted} / shards) candidates a shard (usually m >= batch_size)"
        )
    if not nonempty:
        return ShardedBadge(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.float64))
    positions_U = torch.cat([p.positions_m for p in nonempty])
    embeddings_U_E = torch.cat([p.embeddings_m_E for p in nonempty])
    if positions_U.unique().numel() != positions_U.numel():
        raise ValueError("two proposals share a position: the shards overlap")
    by_position = positions_U.argsort()
    positions_U, embeddings_U_E = positions_U[by_position], embeddings_U_E[by_position]
    rows, probabilities = badge(embeddings_U_E, batch_size, generator, return_probabilities=True)
    return ShardedBadge(positions_U[rows], probabilities)


def kmeans_potential(
    embeddings_N_E: torch.Tensor, chosen_b: torch.Tensor, block_rows: int = 4096
) -> float:
    """sum over every row n of min over chosen rows c of ||e_n - e_c||^2 (float64): the
    k-means++ potential of the seeding, lower being a better cover. `chosen_b` are row indices
    into `embeddings_N_E` (with the whole pool in pool order, its global positions).

    A measure, not a selection: it uses ||e||^2 + ||c||^2 - 2 e.c in float64 (clamped at 0),
    a matrix product per block of `block_rows` rows, as fast as a few picks while the explicit
    differences of `squared_distances_to` would cost as much as seeding b picks again. Rounding
    is about 1e-16 of the squared norms per term."""
    _check_matrix("embeddings_N_E", embeddings_N_E, "N x E")
    if not isinstance(chosen_b, torch.Tensor) or chosen_b.ndim != 1 or chosen_b.numel() == 0:
        raise ValueError("chosen_b must be a non-empty 1-D tensor of row indices")
    n = embeddings_N_E.shape[0]
    if int(chosen_b.min()) < 0 or int(chosen_b.max()) >= n:
        raise ValueError(f"chosen_b has row indices outside [0, {n})")
    centers_b_E = embeddings_N_E[chosen_b].to(torch.float64)
    center_norms_b = centers_b_E.square().sum(dim=1)
    total = 0.0
    for start in range(0, n, block_rows):
        block_B_E = embeddings_N_E[start : start + block_rows].to(torch.float64)
        d2_B_b = block_B_E.square().sum(dim=1, keepdim=True) + center_norms_b
        d2_B_b -= 2 * block_B_E @ centers_b_E.T
        total += float(d2_B_b.min(dim=1).values.clamp_(min=0).sum())
    return total
