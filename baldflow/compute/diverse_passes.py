"""BADGE and CoreSet on a pool scored in shards: what a shard computes for them, and the passes
the merge needs (the maths is `acquisition.diverse_shards`).

A shard embeds its unlabeled rows with the round's model (the penultimate features; BADGE also
the MC predictive under the round's masks, as `compute.scoring` embeds a pool in one process)
and proposes a few of them:
- CoreSet (`COVER_CANDIDATES`): its first m rows by squared distance to the labeled set's
  features (computed once by the flow and broadcast as a file) and to the picks certified so
  far (in the job), and a bound on the rows it did not send. Passes repeat until every pick
  of the batch is certified: the batch is then `coreset`'s on the whole pool, in the same
  order. Each pass embeds the shard again (no MC passes: features only).
- BADGE (`SEEDING_CANDIDATES`): its own k-means++ seeding of m rows on its gradient
  embeddings, one pass. The merge seeds over their union: the first pick is exact, the others
  are drawn among the candidates only (docs/acquisition.md gives the measured gap), and the
  batch depends on how the pool was cut into shards.
Each shard sends its rows' ids, positions (pool rows), features (and BADGE's probabilities);
the flow then runs the strategy's own `select` on the merge's rows: BADGE on the union of the
candidates, CoreSet on the certified picks (greedy k-center over exactly those rows, with the
labeled set as centers, takes them in the order the whole pool would).

No import of `compute.sharding`: it calls in here with the model and the pool it opened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from baldflow.acquisition.badge import gradient_embeddings
from baldflow.acquisition.diverse_shards import (
    CoresetProposal,
    CoresetRequest,
    badge_shard_proposal,
    coreset_in_shards,
    coreset_shard_proposal,
)
from baldflow.acquisition.strategy import COVER_CANDIDATES, SEEDING_CANDIDATES
from baldflow.compute import staging
from baldflow.seeds import STREAM_SCORE, generator_for

DIVERSE_NEEDS = frozenset({COVER_CANDIDATES, SEEDING_CANDIDATES})
# Rows a shard proposes per pick of the batch (benchmarks/diverse_shards.py, N 20,000, 10
# seeds). BADGE: b, whose seeding's k-means++ potential came closest to the one process's
# (1.00-1.11x at b 100 on 1-16 shards); more candidates made it worse (1.09-1.18x at 2b-4b),
# since D^2 sampling among spread-out candidates ignores how many rows each stands for.
# CoreSet: exact at any m; with a labeled set 2b certified the whole batch in one pass.
CANDIDATES_PER_PICK = {SEEDING_CANDIDATES: 1, COVER_CANDIDATES: 2}
LABELED_FEATURES_FILE = "labeled-features.npy"


@dataclasses.dataclass(frozen=True)
class DiverseRows:
    """A shard's rows for BADGE's or CoreSet's merge: ids, pool positions (int64, increasing),
    features (float32) and, for BADGE, the MC predictive (float64); `proposal` is what the
    merge maths reads (a CoresetProposal, None once the passes are over). `passes` and
    `certified` describe CoreSet's passes once they are over (1 and False for BADGE)."""

    sample_ids: list[str]
    positions: torch.Tensor
    features_m_D: torch.Tensor
    probs_m_C: torch.Tensor | None
    proposal: CoresetProposal | None = None
    passes: int = 1
    certified: bool = False
    # CoreSet, once the passes are over: the labeled set's features the shards measured from.
    labeled_features_L_D: torch.Tensor | None = None


def labeled_features(job: Any) -> torch.Tensor | None:
    """CoreSet's broadcast: the labeled set's features the job names (None: BADGE, or no
    labeled set)."""
    if job.labeled_features_file is None:
        return None
    return torch.from_numpy(staging.read_array(job.labeled_features_file))


def candidates_per_shard(needs: frozenset[str], batch_size: int) -> int:
    """m: the rows each shard proposes for a batch of `batch_size` under the plan's needs."""
    return max(CANDIDATES_PER_PICK[need] for need in needs & DIVERSE_NEEDS) * batch_size


def embed_rows(
    job: Any, model: Any, pool: Any, start: int, stop: int, keep: list[int], read_rows: int
):
    """(features float32, probs float64 or None) of the kept rows of [start, stop) (offsets
    into the range), read `read_rows` at a time, each block with a fresh generator of the
    round's masks (the masks of the one process's single pass)."""
    from baldflow.inference import embed_pool

    with_probs = SEEDING_CANDIDATES in job.needs
    mc_samples = job.mc_samples if with_probs else 0
    features, probs = [], []
    kept = torch.tensor(keep, dtype=torch.long)
    for offset in range(0, stop - start, read_rows):
        end = min(offset + read_rows, stop - start)
        block = kept[(kept >= offset) & (kept < end)] - offset
        if block.numel() == 0:
            continue
        x_B = pool.rows(start + offset, start + end)[block]
        features_B_D, probs_B_C = embed_pool(
            model, x_B, mc_samples, generator_for(job.mask_seed, STREAM_SCORE),
            chunk_size=job.chunk_size, mixed_precision=job.mixed_precision,
        )  # fmt: skip
        features.append(features_B_D)
        probs.append(probs_B_C)
    if not features:
        return None, None
    return torch.cat(features), torch.cat(probs) if with_probs else None


def propose(
    job: Any,
    model: Any,
    pool: Any,
    start: int,
    stop: int,
    sample_ids: Sequence[str],
    excluded: frozenset[str],
    labeled_features_L_D: torch.Tensor | None,
    read_rows: int,
) -> DiverseRows:
    """This shard's rows for the job's pass (see the module docstring)."""
    keep = [i for i, sid in enumerate(sample_ids) if sid not in excluded]
    positions = torch.tensor([start + i for i in keep], dtype=torch.long)
    ids = [sample_ids[i] for i in keep]
    features, probs = embed_rows(job, model, pool, start, stop, keep, read_rows)
    if features is None:  # an empty shard, or every row labeled
        width = 0 if labeled_features_L_D is None else labeled_features_L_D.shape[1]
        features = torch.empty((0, width), dtype=torch.float32)
    if COVER_CANDIDATES in job.needs:
        request = job.coreset_request
        if request is None:
            raise ValueError("a CoreSet pass needs the job's coreset_request")
        proposal = coreset_shard_proposal(features, positions, labeled_features_L_D, request)
        sent = _local_rows(positions, proposal.positions_m)
        return DiverseRows([ids[i] for i in sent], proposal.positions_m, proposal.features_m_D,
                           None, proposal)  # fmt: skip
    if len(ids) == 0:
        return DiverseRows([], positions, features, torch.empty(0, 0, dtype=torch.float64))
    embeddings = gradient_embeddings(features, probs)
    proposal = badge_shard_proposal(
        embeddings,
        positions,
        candidates_per_shard(job.needs, job.batch_size),
        job.selection_seed,
    )
    sent = sorted(_local_rows(positions, proposal.positions_m))
    return DiverseRows([ids[i] for i in sent], positions[sent], features[sent], probs[sent])


def _local_rows(positions: torch.Tensor, chosen: torch.Tensor) -> list[int]:
    """Indices into `positions` (increasing) of the `chosen` positions, in their order."""
    return torch.searchsorted(positions, chosen).tolist()


# ------------------------------------------------------------------------------- the passes
RunPass = Callable[[Any], list]


def run_passes(job: Any, run_pass: RunPass) -> list:
    """Every pass the job's strategy needs; the results of the last, each shard's summary the
    `DiverseRows` its merge keeps (BADGE: its candidates; CoreSet: its certified picks).
    `run_pass(job)` runs one pass over every shard and returns their results in row order."""
    if COVER_CANDIDATES not in job.needs:
        return run_pass(job)
    last: list = []
    rows_by_position: dict[int, tuple[str, torch.Tensor]] = {}

    def one_pass(request: CoresetRequest) -> list[CoresetProposal]:
        nonlocal last
        last = run_pass(dataclasses.replace(job, coreset_request=request))
        for result in last:
            rows: DiverseRows = result.summary
            for sid, position, feature in zip(
                rows.sample_ids, rows.positions.tolist(), rows.features_m_D, strict=True
            ):
                rows_by_position[position] = (sid, feature)
        return [result.summary.proposal for result in last]

    sharded = coreset_in_shards(
        one_pass, job.batch_size, candidates_per_shard(job.needs, job.batch_size)
    )
    picked = sorted(sharded.positions.tolist())
    labeled = labeled_features(job)
    width = 0 if not rows_by_position else next(iter(rows_by_position.values()))[1].numel()
    kept = []
    for result in last:
        mine = [p for p in picked if result.start <= p < result.stop]
        features = [rows_by_position[p][1] for p in mine]
        rows = DiverseRows(
            [rows_by_position[p][0] for p in mine], torch.tensor(mine, dtype=torch.long),
            torch.stack(features) if features else torch.empty((0, width)), None, None,
            sharded.passes, sharded.certified, labeled,
        )  # fmt: skip
        kept.append(dataclasses.replace(result, summary=rows))
    return kept


def merged_rows(summaries: Sequence[DiverseRows]) -> DiverseRows:
    """Every shard's kept rows as one, in pool order (the order the one process sees them)."""
    nonempty = [rows for rows in summaries if len(rows.sample_ids)]
    first = summaries[0]
    if not nonempty:
        return DiverseRows([], torch.empty(0, dtype=torch.long), torch.empty(0, 0), None, None,
                           first.passes, first.certified, first.labeled_features_L_D)  # fmt: skip
    positions = torch.cat([rows.positions for rows in nonempty])
    order = positions.argsort()
    ids = [sid for rows in nonempty for sid in rows.sample_ids]
    probs = None
    if nonempty[0].probs_m_C is not None:
        probs = torch.cat([rows.probs_m_C for rows in nonempty])[order]
    return DiverseRows(
        [ids[i] for i in order.tolist()], positions[order],
        torch.cat([rows.features_m_D for rows in nonempty])[order], probs, None,
        first.passes, first.certified, first.labeled_features_L_D,
    )  # fmt: skip
