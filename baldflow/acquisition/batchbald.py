"""BatchBALD: greedy maximisation of the joint mutual information I[y_1..y_b; w].

The state after choosing points S is a set of label configurations m of S, each with a weight
pi_m (its probability, or its share of the samples) and the posterior W_m over the K model
samples given that configuration: W_mk = p(w_k | y_S = m). The gain of a candidate x is then

    I[y_x; w | y_S] = sum_m pi_m H[ W_m @ p(y_x | w) ] - E_w H[y_x | x, w],

which equals H[y_S, y_x] - H[y_S] - E_w H[y_x | x, w] of the joint-entropy formulation, but
every row stays normalised (no underflow of long products) and the same code serves the exact
regime (all C^n configurations) and the sampled one (num_samples configurations drawn from the
joint). The gain never exceeds the previous step's gain (submodularity), which lazy greedy uses
to skip most candidates.

Stochastic BatchBALD (`mode="power"` or `"softmax"`): the stochastic-acquisition poster's plan to
"approximate the correlation and sample stochastically taking into account the error terms".
The conditional gain already accounts for the correlation with the points chosen so far; instead
of taking its arg-max, each step SAMPLES the next point from weights gain^beta (power; a gain
<= 0 has weight 0) or exp(beta * gain) (softmax), by Gumbel-max. Why sample: the gains are
estimates (sampled joint entropies, a finite posterior sample) and greedy trusts every digit of
them; sampling hedges against those errors like PowerBALD does for BALD. beta -> inf is BatchBALD.
Since the noise of every candidate is drawn before its gain is known, lazy evaluation stays exact:
a key's upper bound follows from the gain's upper bound and the known noise.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from baldflow.acquisition.annealed import pick_probabilities
from baldflow.acquisition.scores import ScoreInputError, bald, expected_conditional_entropy
from baldflow.acquisition.selection import (
    perturbed_keys,
    power_log_weights,
    standard_gumbel,
)
from baldflow.acquisition.sharded import _checked_ids, _checked_seed, _duplicates, id_gumbel
from baldflow.acquisition.strategy import (
    CANDIDATE_LOG_PROBS,
    Noise,
    ScoreCut,
    Selection,
    SelectionInputs,
    Strategy,
)

STOCHASTIC_MODES = ("power", "softmax")

DEFAULT_NUM_SAMPLES = 10_000
# Scratch memory for one chunk of candidate evaluations ([configs, candidates, classes] doubles).
DEFAULT_MAX_MEMORY_BYTES = 256 * 2**20
# Candidates evaluated first in each lazy step; doubles each time the bound is not yet beaten.
_FIRST_LAZY_CHUNK = 32
# Computed gains may exceed their mathematical bound by rounding; stop lazily only past it.
_BOUND_SLACK = 1e-12
# Below this many configurations the grouped bound would cost about as much as the real thing.
_GROUPING_MIN_CONFIGURATIONS = 100


class BatchBALDSelection(NamedTuple):
    """The batch in pick order, each pick's gain (its BatchBALD increment), and how many picks
    were scored with exact joint entropies before sampling took over.

    `probabilities` (stochastic modes only, else None): the probability that step i sampled its
    point given the earlier picks, i.e. its normalised weight among the remaining candidates'
    gains. Known only where every remaining gain was computed: always at step 0 and with
    lazy=False; NaN where lazy evaluation skipped candidates.
    """

    indices: torch.Tensor
    gains: torch.Tensor
    exact_steps: int
    probabilities: torch.Tensor | None = None


def expected_entropies(
    posteriors_M_K: torch.Tensor, weights_M: torch.Tensor, probs_n_K_C: torch.Tensor
) -> torch.Tensor:
    """sum_m weights_m H[posteriors_m @ probs_x] for each of the n candidates x: [n]."""
    n, K, C = probs_n_K_C.shape
    predictive_M_nC = posteriors_M_K @ probs_n_K_C.permute(1, 0, 2).reshape(K, n * C)
    # In place, and weighting before summing over classes, because these [M, n*C] passes are
    # nearly all of BatchBALD's time. Clamping 0 to the smallest double makes 0 log 0 = 0.
    plogp_M_nC = predictive_M_nC.clamp_min_(torch.finfo(torch.float64).tiny)
    plogp_M_nC = plogp_M_nC.log().mul_(plogp_M_nC)
    return -(weights_M @ plogp_M_nC).view(n, C).sum(-1)


class _Configurations:
    """Label configurations of the chosen points: weights pi_M and posteriors W_M_K."""

    def __init__(self, K: int, num_samples: int, generator: torch.Generator):
        self.num_samples = num_samples
        self.generator = generator
        self.posteriors_M_K = torch.full((1, K), 1.0 / K, dtype=torch.float64)
        self.weights_M = torch.ones(1, dtype=torch.float64)
        self.sample_counts_M: torch.Tensor | None = None  # set once sampling takes over

    @property
    def exact(self) -> bool:
        return self.sample_counts_M is None

    def predictive(self, probs_K_C: torch.Tensor) -> torch.Tensor:
        """p(y_x = c | y_S = m) for every configuration: [M, C]."""
        return self.posteriors_M_K @ probs_K_C

    def expected_entropies(self, probs_n_K_C: torch.Tensor) -> torch.Tensor:
        """sum_m pi_m H[p(y_x | y_S = m)] for each of n candidates."""
        return expected_entropies(self.posteriors_M_K, self.weights_M, probs_n_K_C)

    def grouped(self, groups_M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge configurations by group: weights add up, posteriors are weight-averaged.

        H is concave and the predictive is linear in the posterior, so expected entropies
        over the merged configurations bound those over the originals from above: a cheap
        upper bound on every candidate's gain.
        """
        G = int(groups_M.max()) + 1
        K = self.posteriors_M_K.shape[1]
        weights_G = torch.zeros(G, dtype=torch.float64).index_add_(0, groups_M, self.weights_M)
        mass_G_K = torch.zeros(G, K, dtype=torch.float64).index_add_(
            0, groups_M, self.weights_M[:, None] * self.posteriors_M_K
        )
        used = weights_G > 0
        return mass_G_K[used] / weights_G[used, None], weights_G[used]

    def add(self, probs_K_C: torch.Tensor) -> None:
        """Condition on the label of a newly chosen point (probs_K_C = its p(y | w_k))."""
        predictive_M_C = self.predictive(probs_K_C)
        if self.exact:
            joint_M_C = self.weights_M[:, None] * predictive_M_C
            if int((joint_M_C > 0).sum()) <= self.num_samples:
                parents, classes = (joint_M_C > 0).nonzero(as_tuple=True)
                self._set_children(parents, classes, probs_K_C, joint_M_C[parents, classes])
                return
            # Too many configurations: draw num_samples of them from the joint instead.
            draws = torch.multinomial(
                joint_M_C.flatten(), self.num_samples, replacement=True, generator=self.generator
            )
            parents, classes = draws // joint_M_C.shape[1], draws % joint_M_C.shape[1]
        else:
            # Extend every sampled configuration by one label drawn from its own predictive:
            # an ancestral sample of the joint, stratified by the existing samples.
            parents = torch.repeat_interleave(
                torch.arange(len(self.weights_M)), self.sample_counts_M
            )
            classes = torch.multinomial(
                predictive_M_C[parents], 1, replacement=True, generator=self.generator
            ).squeeze(1)
        C = predictive_M_C.shape[1]
        unique_keys, counts = torch.unique(parents * C + classes, return_counts=True)
        self.sample_counts_M = counts
        self._set_children(
            unique_keys // C,
            unique_keys % C,
            probs_K_C,
            counts.to(torch.float64) / self.num_samples,
        )

    def _set_children(self, parents, classes, probs_K_C, weights) -> None:
        """Configuration (parent, class) gets posterior W_parent * p(class | w), renormalised."""
        posteriors = self.posteriors_M_K[parents] * probs_K_C[:, classes].T
        posteriors /= posteriors.sum(1, keepdim=True)
        self.posteriors_M_K = posteriors
        self.weights_M = weights


def _validate(log_probs_N_K_C, batch_size, num_samples, max_memory_bytes) -> torch.Tensor:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if max_memory_bytes < 1:
        raise ValueError(f"max_memory_bytes must be >= 1, got {max_memory_bytes!r}")
    log_probs_N_K_C = torch.as_tensor(log_probs_N_K_C)
    if log_probs_N_K_C.ndim != 3:
        raise ScoreInputError(
            f"log_probs_N_K_C must have 3 dimensions, got shape {tuple(log_probs_N_K_C.shape)}"
        )
    if torch.isnan(log_probs_N_K_C).any():
        raise ScoreInputError("log_probs_N_K_C contains NaN")
    return log_probs_N_K_C.detach().to("cpu")


def batchbald(
    log_probs_N_K_C: torch.Tensor,
    batch_size: int,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    generator: torch.Generator | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    lazy: bool = True,
    return_details: bool = False,
    mode: str | None = None,
    coldness: float = 1.0,
    sample_ids: Sequence[str] | None = None,
    seed: int | None = None,
) -> torch.Tensor | BatchBALDSelection:
    """Greedy BatchBALD batch of min(batch_size, N) distinct pool indices, in pick order.

    Joint entropies are exact while the chosen points have at most `num_samples` label
    configurations of non-zero probability (C^n for a model that never says 0), and estimated
    from `num_samples` configurations sampled from the joint beyond that; `generator` drives the
    sampling (a fresh OS-seeded one if None). All accumulation is float64, and candidates are
    scored in chunks of at most `max_memory_bytes` of scratch memory.

    With `lazy=True` (default) candidates are re-scored in order of their previous gain, which
    bounds the current one, and the step stops once the best exact gain beats the next bound;
    in the exact regime that gives the same batch as plain greedy (`lazy=False`), up to exact
    ties, at a fraction of the cost. With sampled joint entropies the bound holds only
    approximately, as do the estimates themselves.

    Stochastic BatchBALD: `mode="power"` samples each step's point with weights gain^beta
    (gain <= 0: weight 0; if every remaining gain is <= 0, uniformly), `mode="softmax"` with
    weights exp(beta * gain), beta = `coldness` (0 = uniform, inf = BatchBALD, up to exact ties).
    The sample is the arg-max of the perturbed key (see `selection.perturbed_keys`); exact ties
    go to the larger gain, then the larger noise, then the smaller sample id (lower index
    without ids). The noise of step i is Gumbel noise of each sample id under a seed hashed from
    (`seed`, i) when `sample_ids` are given (then `seed` is required and the batch does not
    depend on the pool's order), else drawn from `generator`. With `seed` and no `generator`,
    the generator of the sampled joint entropies is seeded from `seed`, so the same seed gives
    the same batch. `mode=None` (default) is plain greedy BatchBALD, exactly as before.
    """
    log_probs_N_K_C = _validate(log_probs_N_K_C, batch_size, num_samples, max_memory_bytes)
    N, K, C = log_probs_N_K_C.shape
    coldness, sample_ids, seed = _validate_stochastic(mode, coldness, sample_ids, seed, N)
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed % 2**63)
    count = min(batch_size, N)

    probs_N_K_C = log_probs_N_K_C.to(torch.float64).exp()
    conditional_entropy_N = expected_conditional_entropy(log_probs_N_K_C)
    # Before anything is chosen the gain of a point is its BALD score: the first bounds.
    bounds_N = bald(log_probs_N_K_C)
    configurations = _Configurations(K, num_samples, generator)
    max_chunk = max(1, max_memory_bytes // (2 * num_samples * C * 8))

    def gains_of(candidates: torch.Tensor) -> torch.Tensor:
        expected = configurations.expected_entropies(probs_N_K_C[candidates])
        return expected - conditional_entropy_N[candidates]

    def tighten_bounds() -> None:
        """Lower the bounds of all remaining candidates to the grouped-configuration bound."""
        if len(configurations.weights_M) <= _GROUPING_MIN_CONFIGURATIONS:
            return
        posteriors_G_K, weights_G = configurations.grouped(
            _posterior_groups(configurations.posteriors_M_K)
        )
        candidates = available.nonzero().squeeze(1)
        group_chunk = max(1, max_memory_bytes // (2 * len(weights_G) * C * 8))
        grouped = (
            torch.cat(
                [
                    expected_entropies(posteriors_G_K, weights_G, probs_N_K_C[part])
                    for part in candidates.split(group_chunk)
                ]
            )
            - conditional_entropy_N[candidates]
        )
        bounds_N[candidates] = torch.minimum(bounds_N[candidates], grouped + _BOUND_SLACK)

    def noise_of(step: int) -> torch.Tensor:
        if sample_ids is not None:
            return id_gumbel(step_seed(seed, step), sample_ids)
        return standard_gumbel(N, generator)

    chosen: list[int] = []
    gains: list[float] = []
    probabilities: list[float] = []
    exact_steps = 0
    available = torch.ones(N, dtype=torch.bool)
    for step in range(count):
        if mode is not None:
            if step > 0 and lazy:
                tighten_bounds()
            best_index, best_gain, probability = _stochastic_step(
                bounds_N,
                available,
                (lambda c: bounds_N[c]) if step == 0 else gains_of,
                max_chunk,
                noise_of(step),
                mode,
                coldness,
                sample_ids,
                lazy=lazy and step > 0,
            )
            probabilities.append(probability)
        elif step == 0:
            best_index, best_gain = _first_max(bounds_N, torch.arange(N))
        elif lazy:
            tighten_bounds()
            best_index, best_gain = _lazy_step(bounds_N, available, gains_of, max_chunk)
        else:
            best_index, best_gain = _plain_step(available, gains_of, max_chunk)
        if configurations.exact:
            exact_steps += 1
        chosen.append(best_index)
        gains.append(best_gain)
        available[best_index] = False
        bounds_N[best_index] = -torch.inf
        if step + 1 < count:
            configurations.add(probs_N_K_C[best_index])

    indices = torch.tensor(chosen, dtype=torch.long)
    if return_details:
        return BatchBALDSelection(
            indices,
            torch.tensor(gains, dtype=torch.float64),
            exact_steps,
            None if mode is None else torch.tensor(probabilities, dtype=torch.float64),
        )
    return indices


def step_seed(seed: int, step: int) -> int:
    """The id_gumbel seed of step `step` of a stochastic BatchBALD batch under `seed`.

    Why a hash: every (seed, step) gets its own noise, unrelated to other rounds' seeds and to
    the annealed selection's picks (a different prefix), the same in every process.
    """
    digest = hashlib.blake2b(f"stochastic-batchbald/{seed}/{step}".encode(), digest_size=16)
    return int.from_bytes(digest.digest(), "little")


def _validate_stochastic(mode, coldness, sample_ids, seed, N):
    """(coldness, sample_ids as a list or None, seed or None), checked; ValueError otherwise."""
    if mode is None:
        if coldness != 1.0 or sample_ids is not None:
            raise ValueError(
                "coldness and sample_ids apply only to stochastic BatchBALD: pass mode='power' "
                "or mode='softmax'"
            )
        return 1.0, None, None if seed is None else _checked_seed(seed)
    if mode not in STOCHASTIC_MODES:
        raise ValueError(
            f"unknown stochastic BatchBALD mode {mode!r}; valid: None (greedy), "
            f"{', '.join(STOCHASTIC_MODES)}"
        )
    try:
        coldness = float(coldness)
    except (TypeError, ValueError):
        raise ValueError(f"coldness must be a number, got {coldness!r}") from None
    if math.isnan(coldness) or coldness < 0:
        raise ValueError(f"coldness must be >= 0 (0 = uniform, inf = greedy), got {coldness}")
    if seed is not None:
        seed = _checked_seed(seed)
    if sample_ids is not None:
        if seed is None:
            raise ValueError("sample_ids need a seed: the noise is keyed by (seed, step, id)")
        sample_ids = _checked_ids(sample_ids)
        if len(sample_ids) != N:
            raise ValueError(
                f"sample_ids must have one id per pool point: {len(sample_ids)} ids for {N} points"
            )
        if len(set(sample_ids)) != N:
            raise ValueError(
                f"sample_ids must be unique; repeated: {sorted(_duplicates(sample_ids))[:5]}"
            )
    return coldness, sample_ids, seed


def _gain_log_weights(gains: torch.Tensor, mode: str) -> torch.Tensor:
    """log of the weight at beta = 1: log gain (power; -inf for gain <= 0) or the gain."""
    return power_log_weights(gains) if mode == "power" else gains


def _gain_keys(gains, noise, mode, coldness) -> torch.Tensor:
    """Gumbel-max keys of the gains' weights; monotone in the gain for a fixed noise."""
    if coldness == 0:
        return noise.clone()
    return perturbed_keys(_gain_log_weights(gains, mode), noise, coldness)[0]


def _stochastic_step(
    bounds_N: torch.Tensor,
    available: torch.Tensor,
    gains_of: Callable[[torch.Tensor], torch.Tensor],
    max_chunk: int,
    noise_N: torch.Tensor,
    mode: str,
    coldness: float,
    sample_ids: list[str] | None,
    lazy: bool,
) -> tuple[int, float, float]:
    """One Gumbel-max draw over the remaining candidates: (index, its gain, its probability).

    Lazy: the key is increasing in the gain for a fixed noise, so the key of an upper bound on
    the gain bounds the key. Candidates are scored in order of that key bound until the best key
    beats every bound left (strictly, so exact ties are all scored and the tie rule is exact).
    The probability needs every remaining gain: NaN when lazy skipped some.
    """
    candidates = available.nonzero().squeeze(1)
    if lazy:
        key_bounds = _gain_keys(
            bounds_N[candidates] + _BOUND_SLACK, noise_N[candidates], mode, coldness
        )
        order = candidates[key_bounds.argsort(descending=True, stable=True)]
        key_bounds = key_bounds.sort(descending=True, stable=True).values
    else:
        order, key_bounds = candidates, None
    scored: list[torch.Tensor] = []
    scored_gains: list[torch.Tensor] = []
    best_key = -math.inf
    start, chunk = 0, _FIRST_LAZY_CHUNK if lazy else max_chunk
    while start < len(order):
        if key_bounds is not None and best_key > float(key_bounds[start]):
            break
        part = order[start : start + chunk]
        part_gains = gains_of(part)
        if lazy:
            bounds_N[part] = part_gains
        scored.append(part)
        scored_gains.append(part_gains)
        keys = _gain_keys(part_gains, noise_N[part], mode, coldness)
        best_key = max(best_key, float(keys.max()))
        start += len(part)
        chunk = min(2 * chunk, max_chunk) if lazy else max_chunk
    indices = torch.cat(scored)
    gains = torch.cat(scored_gains)
    keys = _gain_keys(gains, noise_N[indices], mode, coldness)
    orders = gains.clamp_min(0.0) if mode == "power" else gains
    field = torch.arange(len(indices))
    for column in (keys, orders, noise_N[indices]):
        values = column[field]
        field = field[values == values.max()]
        if len(field) == 1:
            break
    if sample_ids is None:
        best = min(field.tolist(), key=lambda p: int(indices[p]))
    else:
        best = min(field.tolist(), key=lambda p: sample_ids[int(indices[p])])
    if len(indices) == len(candidates):
        log_weights = _gain_log_weights(gains, mode)
        probability = float(pick_probabilities(log_weights, coldness)[best])
    else:
        probability = math.nan
    return int(indices[best]), float(gains[best]), probability


def _posterior_groups(posteriors_M_K: torch.Tensor) -> torch.Tensor:
    """Group configurations by the model sample their posterior favours most (<= K groups).

    Posteriors that favour the same sample tend to be alike, so averaging within a group loses
    little and the grouped bound stays tight; finer groupings measured slower overall.
    """
    return torch.unique(posteriors_M_K.argmax(1), return_inverse=True)[1]


def _first_max(values: torch.Tensor, candidates: torch.Tensor) -> tuple[int, float]:
    """The candidate with the highest value; among exact ties the lowest pool index."""
    best = values.max()
    index = int(candidates[values == best].min())
    return index, float(best)


def _plain_step(available, gains_of, max_chunk) -> tuple[int, float]:
    candidates = available.nonzero().squeeze(1)
    gains = torch.cat([gains_of(part) for part in candidates.split(max_chunk)])
    return _first_max(gains, candidates)


def _lazy_step(bounds_N, available, gains_of, max_chunk) -> tuple[int, float]:
    """Score candidates in order of their bound until the best gain beats every bound left."""
    order = bounds_N.argsort(descending=True, stable=True)
    order = order[available[order]]
    best_index, best_gain = -1, -float("inf")
    start, chunk = 0, _FIRST_LAZY_CHUNK
    while start < len(order):
        if best_gain > float(bounds_N[order[start]]) + _BOUND_SLACK:
            break
        candidates = order[start : start + chunk]
        gains = gains_of(candidates)
        bounds_N[candidates] = gains
        index, gain = _first_max(gains, candidates)
        if gain > best_gain or (gain == best_gain and index < best_index):
            best_index, best_gain = index, gain
        start += len(candidates)
        chunk = min(2 * chunk, max_chunk)
    return best_index, best_gain


# ------------------------------------------------------------------------------ strategies
class BatchBALD(Strategy):
    """`batchbald`: greedy BatchBALD on the top `batchbald_candidates` by BALD (the cut each
    shard keeps), whose joint log-probs the round predicts once the shards are merged.
    With a `mode` (`stochastic-batchbald`), each next point is sampled from its conditional
    gain^coldness, the noise keyed by candidate id."""

    needs = frozenset({CANDIDATE_LOG_PROBS})
    min_mc_samples = 2  # the gains are 0 everywhere when K = 1
    measure = "BatchBALD"

    def __init__(self, name: str = "batchbald", mode: str | None = None):
        self.name = name
        self.mode = mode

    def cut(self, params: Mapping[str, Any]) -> ScoreCut:
        return ScoreCut("bald", params["batchbald_candidates"], "topk", 1.0)

    def select(
        self, inputs: SelectionInputs, batch_size: int, params: Mapping[str, Any], noise: Noise
    ) -> Selection:
        assert inputs.candidate_ids is not None and inputs.log_probs_M_K_C is not None
        size = min(batch_size, len(inputs.candidate_ids))
        sampled = {}
        if self.mode is not None:
            sampled = {
                "mode": self.mode, "coldness": params["coldness"],
                "sample_ids": inputs.candidate_ids, "seed": noise.seed,
            }  # fmt: skip
        chosen = batchbald(
            inputs.log_probs_M_K_C, size, num_samples=params["batchbald_num_samples"],
            generator=noise.generator, return_details=True, **sampled,
        )  # fmt: skip
        ids = [inputs.candidate_ids[int(i)] for i in chosen.indices]
        probabilities = getattr(chosen, "probabilities", None) if sampled else None
        return Selection(ids, chosen.gains, probabilities)
