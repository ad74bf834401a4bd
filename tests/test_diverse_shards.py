"""CoreSet and BADGE on a pool in shards (baldflow.acquisition.diverse_shards): CoreSet against
`coreset` on the whole pool (same positions, same order), BADGE's first pick, determinism and
independence of the shards' order, and the checks on bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from baldflow.acquisition.badge import badge
from baldflow.acquisition.coreset import coreset
from baldflow.acquisition.diverse_shards import (
    BadgeProposal,
    CoresetRequest,
    badge_shard_proposal,
    coreset_in_shards,
    coreset_shard_proposal,
    first_request,
    kmeans_potential,
    merge_badge_proposals,
    merge_coreset_proposals,
    pool_mean,
    shard_seed,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def split(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    """Contiguous shards [start, stop) of rows 0..n-1 at the given cuts (repeats: empty shards)."""
    bounds = [0, *sorted(cuts), n]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def random_cuts(n: int, shards: int, generator: torch.Generator) -> list[int]:
    return torch.randint(0, n + 1, (shards - 1,), generator=generator).tolist()


def shard_proposer(features_N_D, labeled_L_D, layout, positions_N=None, reverse=False):
    """propose(request) over the shards of `layout`; counts the passes it served."""
    if positions_N is None:
        positions_N = torch.arange(features_N_D.shape[0])
    shards = [(features_N_D[a:z], positions_N[a:z]) for a, z in layout]

    def propose(request: CoresetRequest):
        propose.calls += 1
        answers = [coreset_shard_proposal(f, p, labeled_L_D, request) for f, p in shards]
        return answers[::-1] if reverse else answers

    propose.calls = 0
    return propose


def pool(kind: str, n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(n, d, generator=generator)
    if kind == "clustered":
        centers = torch.randn(4, d, generator=generator) * 5
        which = torch.randint(0, 4, (n,), generator=generator)
        return centers[which] + 0.3 * torch.randn(n, d, generator=generator)
    # "ties": a small grid of integers, so many rows are duplicates and many distances tie.
    return torch.randint(0, 3, (n, d), generator=generator).float()


# ------------------------------------------------------------------------------ CoreSet exact
@pytest.mark.parametrize("local_greedy", [False, True])
@pytest.mark.parametrize("kind", ["uniform", "clustered", "ties"])
@pytest.mark.parametrize("labeled", [True, False])
def test_coreset_in_shards_is_coreset(kind, labeled, local_greedy):
    """Random pools, layouts (empty shards included), batch sizes and candidate counts:
    always coreset's positions in coreset's order, every pick certified, at most b passes
    (b + 2 without labeled rows: the mean and the first pick)."""
    for seed in range(6):
        generator = seeded(100 * seed + len(kind) + labeled)
        n = int(torch.randint(1, 120, (1,), generator=generator))
        d = 2 if kind == "ties" else 4
        features_N_D = pool(kind, n, d, generator)
        labeled_L_D = pool(kind, 5, d, generator) if labeled else None
        shards = [1, 3, 7][seed % 3]
        layout = split(n, random_cuts(n, shards, generator))
        for batch_size in (1, 6, 30):
            expected = coreset(features_N_D, batch_size, labeled_L_D)
            for candidates in (1, batch_size, 2 * batch_size):
                propose = shard_proposer(features_N_D, labeled_L_D, layout)
                result = coreset_in_shards(propose, batch_size, candidates, None, local_greedy)
                assert result.positions.tolist() == expected.tolist(), (seed, batch_size)
                assert result.certified
                assert result.passes == propose.calls
                assert result.passes <= min(batch_size, n) + (0 if labeled else 2)


def test_batch_larger_than_pool_and_all_duplicates():
    """b > N returns every row in coreset's order, also when all rows are equal (every value
    ties at 0 after the first pick: the ties go by position, and the certificate still
    progresses since it compares (value, position))."""
    generator = seeded(3)
    features_N_D = pool("ties", 25, 2, generator)
    same_N_D = torch.ones(9, 3)
    for feats, labeled in (
        (features_N_D, None),
        (features_N_D, features_N_D[:2]),
        (same_N_D, None),
    ):
        layout = split(feats.shape[0], [0, 4, 4, 11])
        expected = coreset(feats, 100, labeled)
        assert expected.numel() == feats.shape[0]
        for candidates, local_greedy in ((1, False), (5, False), (1, True), (5, True)):
            propose = shard_proposer(feats, labeled, layout)
            result = coreset_in_shards(propose, 100, candidates, None, local_greedy)
            assert result.positions.tolist() == expected.tolist()
            assert result.certified


def test_gaps_in_positions_and_shard_order():
    """Positions need not be 0..N-1 (labeled rows leave gaps) and the shards may answer in any
    order: the picks are the positions of coreset's picks on the concatenated rows."""
    generator = seeded(11)
    features_N_D = pool("clustered", 80, 3, generator)
    labeled_L_D = pool("clustered", 4, 3, generator)
    positions_N = torch.randperm(400, generator=generator)[:80].sort().values
    expected = positions_N[coreset(features_N_D, 12, labeled_L_D)]
    layout = split(80, [10, 50, 50, 70])
    for reverse in (False, True):
        propose = shard_proposer(features_N_D, labeled_L_D, layout, positions_N, reverse)
        assert coreset_in_shards(propose, 12, 3).positions.tolist() == expected.tolist()


def test_certificate_needs_a_second_pass():
    """1-D rows, labeled row at 0. Shard A = {10, -9}, shard B = {5}, m = 1. Pass 1 sends 10 and
    5; after 10 is picked, 5's value is 25 but A's unsent -9 (value 81 before, still 81) may be
    larger: 5 is not certified. Pass 2 sends -9, which is the real second pick. Greedy over the
    first pass alone (max_passes=1) would have picked 5, and says it did not certify."""
    features_N_D = torch.tensor([[10.0], [-9.0], [5.0]])
    labeled_L_D = torch.zeros(1, 1)
    layout = [(0, 2), (2, 3)]
    expected = coreset(features_N_D, 2, labeled_L_D).tolist()
    assert expected == [0, 1]
    result = coreset_in_shards(shard_proposer(features_N_D, labeled_L_D, layout), 2, 1)
    assert (result.positions.tolist(), result.passes, result.certified) == (expected, 2, True)
    greedy = coreset_in_shards(shard_proposer(features_N_D, labeled_L_D, layout), 2, 1, 1)
    assert (greedy.positions.tolist(), greedy.passes, greedy.certified) == ([0, 2], 1, False)
    # With m = 2 the first pass holds every row: one pass, certified.
    both = coreset_in_shards(shard_proposer(features_N_D, labeled_L_D, layout), 2, 2)
    assert (both.positions.tolist(), both.passes, both.certified) == (expected, 1, True)


def test_local_greedy_certifies_a_clustered_pool_in_fewer_passes():
    """Six far-apart clusters, no labeled rows, one shard: measured from the first pick alone,
    the top m rows all lie in the farthest cluster and each pass certifies about one pick;
    the shard's own greedy sequence visits every cluster and certifies the rest in one pass
    (mean, first pick, rest). Same batch either way, also over four shards."""
    centers_6_2 = torch.tensor([[0.0, 0], [100, 0], [0, 100], [100, 100], [50, 50], [200, 0]])
    features_N_D = centers_6_2[torch.arange(240) % 6] + torch.randn(240, 2, generator=seeded(2))
    expected = coreset(features_N_D, 8).tolist()
    passes = {}
    for layout in ([(0, 240)], split(240, [60, 120, 180])):
        for local_greedy in (False, True):
            propose = shard_proposer(features_N_D, None, layout)
            result = coreset_in_shards(propose, 8, 8, None, local_greedy)
            assert result.positions.tolist() == expected and result.certified
            passes[len(layout), local_greedy] = result.passes
    assert passes[1, True] == 3 < passes[1, False]
    assert passes[4, True] <= passes[4, False]


def test_the_merge_stops_at_the_first_uncertified_pick():
    features_N_D = torch.tensor([[10.0], [-9.0], [5.0]])
    labeled_L_D = torch.zeros(1, 1)
    request = first_request(1)
    proposals = [
        coreset_shard_proposal(features_N_D[:2], torch.arange(2), labeled_L_D, request),
        coreset_shard_proposal(features_N_D[2:], torch.arange(2, 3), labeled_L_D, request),
    ]
    assert (proposals[0].bound_value, proposals[0].bound_position) == (81.0, 1)
    assert (proposals[1].bound_value, proposals[1].bound_position) == (-math.inf, -1)
    merged = merge_coreset_proposals(proposals, request, 2)
    assert (merged.positions_P.tolist(), merged.complete, merged.added) == ([0], False, 1)
    assert merged.features_P_D.tolist() == [[10.0]]


def test_no_labeled_rows_cost_a_mean_pass_and_a_first_pick_pass():
    generator = seeded(5)
    features_N_D = pool("clustered", 60, 3, generator)
    layout = split(60, [20, 40])
    proposals = shard_proposer(features_N_D, None, layout)(first_request(4))
    assert all(p.reference == "none" and p.positions_m.numel() == 0 for p in proposals)
    torch.testing.assert_close(
        pool_mean(proposals), features_N_D.double().mean(dim=0), rtol=1e-14, atol=1e-14
    )
    # With every row in one proposal: pass 1 the mean, pass 2 the first pick, pass 3 the rest.
    result = coreset_in_shards(shard_proposer(features_N_D, None, [(0, 60)]), 5, 60)
    assert result.passes == 3 and result.certified
    assert result.positions.tolist() == coreset(features_N_D, 5).tolist()


def test_empty_pool():
    empty_N_D = torch.empty(0, 3)
    for labeled in (None, torch.ones(2, 3)):
        result = coreset_in_shards(shard_proposer(empty_N_D, labeled, [(0, 0), (0, 0)]), 4, 2)
        assert (result.positions.tolist(), result.certified) == ([], True)


def test_coreset_rejects_bad_inputs():
    features_N_D = torch.rand(5, 3)
    positions_N = torch.arange(5)
    request = first_request(2)
    with pytest.raises(ValueError, match="candidates"):
        first_request(0)
    with pytest.raises(ValueError, match="candidates"):
        coreset_in_shards(lambda request: [], 3, 0)
    with pytest.raises(ValueError, match="max_passes"):
        coreset_in_shards(lambda request: [], 3, 1, 0)
    with pytest.raises(ValueError, match="int64"):
        coreset_shard_proposal(features_N_D, positions_N.int(), None, request)
    with pytest.raises(ValueError, match="increasing"):
        coreset_shard_proposal(features_N_D, positions_N.flip(0), None, request)
    with pytest.raises(ValueError, match="5 rows"):
        coreset_shard_proposal(features_N_D, torch.arange(4), None, request)
    with pytest.raises(ValueError, match="same embedding"):
        coreset_shard_proposal(features_N_D, positions_N, torch.rand(2, 4), request)
    with pytest.raises(ValueError, match="2-D"):
        coreset_shard_proposal(torch.rand(5), positions_N, None, request)
    with pytest.raises(ValueError, match="batch_size"):
        coreset_in_shards(lambda request: [], 0, 1)
    with pytest.raises(ValueError, match="empty"):
        coreset_in_shards(lambda request: [], 3, 1)
    labeled_L_D = torch.rand(2, 3)
    one = coreset_shard_proposal(features_N_D, positions_N, labeled_L_D, request)
    with pytest.raises(ValueError, match="overlap"):
        merge_coreset_proposals([one, one], request, 3)
    mean_pass = coreset_shard_proposal(features_N_D, positions_N, None, request)
    with pytest.raises(ValueError, match="different requests"):
        merge_coreset_proposals([one, mean_pass], request, 3)


# ------------------------------------------------------------------------------ BADGE
def badge_in_shards(embeddings_N_E, layout, batch_size, candidates, seed, round_seed):
    proposals = [
        badge_shard_proposal(embeddings_N_E[a:z], torch.arange(a, z), candidates, seed)
        for a, z in layout
    ]
    return merge_badge_proposals(proposals, batch_size, seeded(round_seed)), proposals


def embeddings(n: int, e: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(n, e, generator=generator) * torch.rand(n, 1, generator=generator)


def test_badge_first_pick_is_the_pools():
    """The pool's largest-norm row (lowest position among equals) comes first, whatever the
    layout; ties are made on purpose by copying the largest row into other shards."""
    for seed in range(12):
        generator = seeded(seed)
        n = int(torch.randint(1, 150, (1,), generator=generator))
        embeddings_N_E = embeddings(n, 6, generator)
        if seed % 2:
            top = int(embeddings_N_E.square().sum(dim=1).argmax())
            copies = torch.randint(0, n, (3,), generator=generator)
            embeddings_N_E[copies] = embeddings_N_E[top].clone()
        layout = split(n, random_cuts(n, 1 + seed % 5, generator))
        expected = badge(embeddings_N_E, 5, seeded(seed))
        result, _ = badge_in_shards(embeddings_N_E, layout, 5, 5, seed, seed)
        assert int(result.positions[0]) == int(expected[0])
        assert result.positions.numel() == min(5, n)


def test_badge_merge_independent_of_shard_order_and_deterministic():
    generator = seeded(21)
    embeddings_N_E = embeddings(300, 8, generator)
    layout = split(300, [0, 40, 40, 170, 250])
    result, proposals = badge_in_shards(embeddings_N_E, layout, 12, 24, 7, 99)
    again, _ = badge_in_shards(embeddings_N_E, layout, 12, 24, 7, 99)
    assert torch.equal(result.positions, again.positions)
    assert torch.equal(result.probabilities, again.probabilities)
    shuffled = [proposals[i] for i in (3, 0, 5, 1, 4, 2)]
    reordered = merge_badge_proposals(shuffled, 12, seeded(99))
    assert torch.equal(result.positions, reordered.positions)
    assert torch.equal(result.probabilities, reordered.probabilities)
    # Distinct picks, probabilities in (0, 1], the first exactly 1.
    assert result.positions.unique().numel() == 12
    assert bool((result.probabilities > 0).all()) and bool((result.probabilities <= 1).all())
    assert float(result.probabilities[0]) == 1.0
    # Another seed draws other candidates (a shard's stream depends on the seed).
    other, _ = badge_in_shards(embeddings_N_E, layout, 12, 24, 8, 99)
    assert not torch.equal(result.positions, other.positions)


def test_badge_shard_stream_depends_on_seed_and_first_position_only():
    generator = seeded(4)
    embeddings_N_E = embeddings(50, 5, generator)
    positions_N = torch.arange(100, 150)
    one = badge_shard_proposal(embeddings_N_E, positions_N, 10, 3)
    two = badge_shard_proposal(embeddings_N_E.clone(), positions_N.clone(), 10, 3)
    assert torch.equal(one.positions_m, two.positions_m)
    assert shard_seed(3, 100) != shard_seed(3, 101) != shard_seed(4, 100)
    assert 0 <= shard_seed(2**70, 0) < 2**63


def test_badge_with_every_row_proposed_is_badge():
    """One shard that proposes all its rows: the merge seeds over the whole pool in pool order,
    so it is `badge` on the pool, picks and probabilities."""
    generator = seeded(8)
    embeddings_N_E = embeddings(40, 4, generator)
    result, _ = badge_in_shards(embeddings_N_E, [(0, 40)], 10, 40, 1, 5)
    rows, probabilities = badge(embeddings_N_E, 10, seeded(5), return_probabilities=True)
    assert torch.equal(result.positions, rows)
    assert torch.equal(result.probabilities, probabilities)


def test_badge_empty_shards_and_small_pools():
    generator = seeded(9)
    embeddings_N_E = embeddings(7, 3, generator)
    layout = split(7, [0, 0, 3, 7])
    # A batch larger than the pool: every row, when each shard proposes all of its rows.
    result, _ = badge_in_shards(embeddings_N_E, layout, 20, 4, 0, 0)
    assert sorted(result.positions.tolist()) == list(range(7))
    # 2 candidates from each of the 2 non-empty shards cannot make a batch of 5: refused.
    with pytest.raises(ValueError, match="proposed 4 rows in all for a batch of 5"):
        badge_in_shards(embeddings_N_E, layout, 5, 2, 0, 0)
    empty, _ = badge_in_shards(torch.empty(0, 3), [(0, 0)], 5, 2, 0, 0)
    assert empty.positions.numel() == 0


def test_badge_rejects_bad_inputs():
    embeddings_N_E = torch.rand(6, 3)
    with pytest.raises(ValueError, match="candidates"):
        badge_shard_proposal(embeddings_N_E, torch.arange(6), 0, 0)
    with pytest.raises(ValueError, match="seed"):
        badge_shard_proposal(embeddings_N_E, torch.arange(6), 2, 1.5)
    with pytest.raises(ValueError, match="increasing"):
        badge_shard_proposal(embeddings_N_E, torch.arange(6).flip(0), 2, 0)
    a = BadgeProposal(torch.tensor([0]), torch.rand(1, 3), 1)
    b = BadgeProposal(torch.tensor([1]), torch.rand(1, 4), 1)
    with pytest.raises(ValueError, match="widths"):
        merge_badge_proposals([a, b], 2, seeded(0))
    with pytest.raises(ValueError, match="overlap"):
        merge_badge_proposals([a, a], 2, seeded(0))
    with pytest.raises(ValueError, match="non-empty"):
        merge_badge_proposals([], 2, seeded(0))
    with pytest.raises(ValueError, match="outside"):
        kmeans_potential(embeddings_N_E, torch.tensor([6]))


def test_kmeans_potential_is_the_sum_of_min_squared_distances():
    generator = seeded(12)
    embeddings_N_E = torch.randn(30, 4, generator=generator).double()
    chosen = torch.tensor([3, 17, 5])
    brute = sum(
        min(float((row - embeddings_N_E[c]).square().sum()) for c in chosen.tolist())
        for row in embeddings_N_E
    )
    assert kmeans_potential(embeddings_N_E, chosen) == pytest.approx(brute, rel=1e-12)
    assert kmeans_potential(embeddings_N_E, torch.arange(30)) == pytest.approx(0.0, abs=1e-12)
    assert kmeans_potential(embeddings_N_E, chosen, block_rows=7) == pytest.approx(brute, rel=1e-12)
