"""The one registry of acquisition strategies: a name such as `power-bald` -> the object that
runs it (an `acquisition.strategy.Strategy`), and `acquire`, choosing a batch with one.

Built-in strategies (registered below through the same `register_strategy` as any other):

- `<mode>-<score>`: a selection mode of selection.py applied to a score of scores.py, or to
  EPIG (`power-epig`), and `random` (scored.py);
- `batchbald` and `stochastic-batchbald` (joint scoring of the top BALD candidates, the second
  sampling each next point from its conditional gains: batchbald.py);
- `annealed-<mode>-bald` (one pick at a time with a coldness schedule: annealed.py);
- `badge` and `coreset` (diversity in the model's embeddings: badge.py, coreset.py).

Names use hyphens only (`power-least-confidence`); the score it runs keeps its function's name
(`least_confidence`). Campaigns recorded with the older underscore spelling still resolve
(canonical_name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from baldflow import plugins
from baldflow.acquisition.annealed import ANNEALED_MODES, Annealed
from baldflow.acquisition.badge import Badge
from baldflow.acquisition.batchbald import DEFAULT_NUM_SAMPLES, BatchBALD
from baldflow.acquisition.coreset import CoreSet
from baldflow.acquisition.picks import summarise_shard
from baldflow.acquisition.scored import EPIG, ScoredStrategy
from baldflow.acquisition.scores import SCORES
from baldflow.acquisition.selection import MODES
from baldflow.acquisition.strategy import (
    CANDIDATE_LOG_PROBS,
    EMBEDDINGS,
    LABELED_EMBEDDINGS,
    POOL_SCORES,
    SAMPLE_SCORES,
    Noise,
    SelectionInputs,
    Strategy,
    StrategyError,
    check_strategy,
)

SCORED_MODES = tuple(mode for mode in MODES if mode != "random")


class UnknownStrategyError(ValueError):
    """A strategy name that the registry does not know."""


# Both are changed in place by (un)registration: code that imported them sees every strategy.
STRATEGIES: dict[str, Strategy] = {}
STRATEGY_NAMES: list[str] = []


def register_strategy(
    strategy: Strategy, *, replace: bool = False, builtin: bool = False
) -> Strategy:
    """Make `strategy` known by its name: to `get_strategy`, to config validation
    (`acquisition.strategy`), to campaigns and their ledgers, to `baldflow plugins`. Returns it.

    A name already registered is refused (StrategyError) unless `replace=True`; so is an
    object that does not keep the interface (see `acquisition.strategy.check_strategy`).
    `builtin` is for baldflow's own strategies (recorded as part of baldflow's version).
    """
    check_strategy(strategy)
    name = strategy.name
    if name in STRATEGIES and not replace:
        raise StrategyError(
            f"a strategy named {name!r} is already registered ({STRATEGIES[name]!r}); "
            "choose another name, or pass replace=True to replace it"
        )
    plugins.STRATEGY_PLUGINS.register(name, strategy, replace=True, builtin=builtin)
    STRATEGIES[name] = strategy
    STRATEGY_NAMES[:] = sorted(STRATEGIES)
    return strategy


def unregister_strategy(name: str) -> Strategy:
    """Forget the strategy called `name` and return it (UnknownStrategyError if none is)."""
    strategy = get_strategy(name)
    del STRATEGIES[strategy.name]
    STRATEGY_NAMES[:] = sorted(STRATEGIES)
    plugins.STRATEGY_PLUGINS.unregister(strategy.name)
    return strategy


def _as_strategy(obj: Any, spec: str) -> Strategy:
    """What a strategy plug-in's entry point or import string names, as a Strategy: an
    instance as it is, a Strategy subclass or a factory called without arguments."""
    if not isinstance(obj, Strategy) and callable(obj):
        try:
            obj = obj()
        except Exception as error:  # noqa: BLE001 (the plug-in's own constructor)
            raise plugins.PluginError(
                "strategy", spec, f"could not be made: {plugins.error_line(error)}"
            ) from error
    try:
        return check_strategy(obj)
    except StrategyError as error:
        raise plugins.PluginError("strategy", spec, str(error)) from error


plugins.STRATEGY_PLUGINS.set_adapter(
    _as_strategy,
    "a baldflow.acquisition.Strategy (instance, subclass or factory): name, needs, shardable, "
    "check(params, sharded_by), cut(params), select(inputs, batch_size, params, noise)",
)


def _dashed(score: str) -> str:
    """A score's name as it reads inside a strategy name: one separator style throughout."""
    return score.replace("_", "-")


def _register_builtins() -> None:
    def builtin(strategy: Strategy) -> None:
        register_strategy(strategy, builtin=True)

    for mode in SCORED_MODES:
        for score in (*SCORES, EPIG):
            builtin(ScoredStrategy(f"{mode}-{_dashed(score)}", mode, score))
    builtin(ScoredStrategy("random", "random", None))
    builtin(BatchBALD())
    builtin(BatchBALD("stochastic-batchbald", mode="power"))
    for mode in ANNEALED_MODES:
        builtin(Annealed(mode))
    builtin(Badge())
    builtin(CoreSet())


_register_builtins()


def canonical_name(name: str) -> str:
    """`name` as the registry spells it today.

    Campaigns recorded before names settled on hyphens say `power-least_confidence`; their
    campaign.yaml, ledger rows and MLflow tags must keep resolving, so an old spelling maps to
    today's name. Anything else comes back unchanged (unknown names stay unknown).
    """
    if isinstance(name, str) and name not in STRATEGIES:
        dashed = name.replace("_", "-")
        if dashed in STRATEGIES:
            return dashed
    return name


def suggest(name: str) -> list[str]:
    """The strategies a mistyped or incomplete strategy name most likely meant (maybe none).

    A bare score (`bald`, `least_confidence`) is a strategy without its selection mode: the
    answer is that score under the paper's stochastic mode and under top-k (`power-bald`,
    `topk-bald`), not whichever name happens to be spelled alike (`badge`).
    """
    import difflib

    text = str(name).strip().lower().replace("_", "-")
    scores = {_dashed(score) for score in (*SCORES, EPIG)}
    if text in scores:
        return [f"{mode}-{text}" for mode in ("power", "topk")]
    return difflib.get_close_matches(text, STRATEGY_NAMES, n=1, cutoff=0.65)


def get_strategy(name: str) -> Strategy:
    """The strategy called `name` (or its old spelling), an installed package's entry point
    (`baldflow.strategies`) or an import string `package.module:attr`; UnknownStrategyError
    for a name none of these knows, PluginError for a plug-in that does not load."""
    try:
        return STRATEGIES[canonical_name(name)]
    except (KeyError, TypeError):
        pass
    if plugins.STRATEGY_PLUGINS.knows(name):
        return plugins.STRATEGY_PLUGINS.resolve(name).obj
    raise UnknownStrategyError(
        f"unknown acquisition strategy {name!r}; valid strategies: {', '.join(STRATEGY_NAMES)}"
    )


@dataclass
class Acquisition:
    """A chosen batch and, per chosen point, what the ledger records about why.

    `scores` is each point's score (for batchbald: its gain, the BatchBALD increment);
    `probabilities` its first-pick probability and `keys` its perturbed key, for the
    stochastic modes (None where they do not apply).
    """

    indices: torch.Tensor
    scores: torch.Tensor | None
    probabilities: torch.Tensor | None
    keys: torch.Tensor | None


def acquire(
    strategy: Strategy | str,
    batch_size: int,
    *,
    scores_N: torch.Tensor | None = None,
    log_probs_N_K_C: torch.Tensor | None = None,
    coldness: float = 1.0,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    generator: torch.Generator | None = None,
    pool_size: int | None = None,
    coldness_end: float | None = None,
    features_N_D: torch.Tensor | None = None,
    probs_N_C: torch.Tensor | None = None,
    labeled_features_L_D: torch.Tensor | None = None,
    seed: int | None = None,
) -> Acquisition:
    """Choose a batch of pool indices with `strategy`, through the `select` a round calls.

    Give what the strategy needs: `scores_N` for the scored and annealed strategies (random:
    `scores_N`, recorded, not used, or `pool_size`), `log_probs_N_K_C` for batchbald and
    stochastic-batchbald (every sample is a candidate), `features_N_D` and `probs_N_C` for
    badge, `features_N_D` (and `labeled_features_L_D`) for coreset. `coldness_end` is the
    annealed schedule's last coldness (default: `coldness`). Sequential draws come from
    `generator`; noise keyed by sample (a pool index here) from `seed`, else from one draw
    of `generator` (a fresh OS-seeded one when None: pass one for reproducible batches).
    """
    if isinstance(strategy, str):
        strategy = get_strategy(strategy)
    params = {
        "batch_size": batch_size, "coldness": coldness,
        "coldness_end": coldness if coldness_end is None else coldness_end,
        "batchbald_num_samples": num_samples,
    }  # fmt: skip
    given = {
        "scores_N": scores_N, "log_probs_N_K_C": log_probs_N_K_C, "features_N_D": features_N_D,
        "pool_size": pool_size,
    }  # fmt: skip
    count = _pool_count(strategy, given)
    ids = _index_ids(count)
    params["batchbald_candidates"] = max(count, 1)
    noise = Noise.of_generator(generator, seed)
    inputs = _inputs_from_arrays(strategy, params, noise, ids, scores_N, log_probs_N_K_C,
                                 features_N_D, probs_N_C, labeled_features_L_D)  # fmt: skip
    chosen = strategy.select(inputs, min(batch_size, count), params, noise)
    indices = torch.tensor([int(sid) for sid in chosen.sample_ids], dtype=torch.long)
    scores = _as_tensor(chosen.scores)
    if scores is None and scores_N is not None:  # random: the given scores, as recorded
        scores = torch.as_tensor(scores_N)[indices].double()
    return Acquisition(indices, scores, _as_tensor(chosen.probabilities), _as_tensor(chosen.keys))


def _pool_count(strategy: Strategy, given: Mapping[str, Any]) -> int:
    """The pool's size from the first array given for what the strategy needs."""
    for array in (given["scores_N"], given["log_probs_N_K_C"], given["features_N_D"]):
        if array is not None:
            return int(torch.as_tensor(array).shape[0])
    if given["pool_size"] is not None:
        return int(given["pool_size"])
    what = _what_it_needs(strategy)
    raise ValueError(f"strategy {strategy.name!r} needs {what}")


def _what_it_needs(strategy: Strategy) -> str:
    if CANDIDATE_LOG_PROBS in strategy.needs:
        return "log_probs_N_K_C"
    if strategy.needs & {EMBEDDINGS, LABELED_EMBEDDINGS}:
        return "features_N_D (and probs_N_C)"
    score = strategy.cut({"batch_size": 1, "coldness": 1.0, "batchbald_candidates": 1}).score
    if score is None:
        return "scores_N or pool_size"
    return f"scores_N ({score})"


def _index_ids(count: int) -> list[str]:
    """Pool positions as sample ids, zero-padded so that the smaller id is the lower index."""
    width = len(str(max(count - 1, 0)))
    return [f"{i:0{width}d}" for i in range(count)]


def _inputs_from_arrays(
    strategy, params, noise, ids, scores_N, log_probs_N_K_C, features_N_D, probs_N_C,
    labeled_features_L_D,
) -> SelectionInputs:  # fmt: skip
    """What the strategy's `needs` name, made from the arrays given to `acquire` as the round's
    pass makes them from the pool (one shard: the whole pool)."""
    needs = strategy.needs
    inputs = SelectionInputs()
    if needs & {SAMPLE_SCORES, POOL_SCORES}:
        cut = strategy.cut(params)
        if scores_N is None and cut.score is not None:
            raise ValueError(f"strategy {strategy.name!r} needs scores_N ({cut.score})")
        if scores_N is None or cut.score is None:  # random: no scores, the ids' noise only
            pool_scores_N = torch.zeros(len(ids), dtype=torch.float64)
        else:
            pool_scores_N = torch.as_tensor(scores_N)
        if POOL_SCORES in needs:
            inputs.sample_ids, inputs.scores_N = ids, pool_scores_N
        if SAMPLE_SCORES in needs:
            # Softrank weighs a score by its rank in the whole pool.
            if cut.mode == "softrank":
                inputs.sorted_scores = pool_scores_N.double().sort().values
            inputs.summaries = [
                summarise_shard(pool_scores_N, ids, cut.size, cut.mode, cut.coldness,
                                noise.seed, inputs.sorted_scores)
            ]  # fmt: skip
    if CANDIDATE_LOG_PROBS in needs:
        if log_probs_N_K_C is None:
            raise ValueError(f"strategy {strategy.name!r} needs log_probs_N_K_C")
        inputs.candidate_ids, inputs.log_probs_M_K_C = ids, log_probs_N_K_C
    if needs & {EMBEDDINGS, LABELED_EMBEDDINGS}:
        if features_N_D is None:
            raise ValueError(f"strategy {strategy.name!r} needs features_N_D")
        inputs.sample_ids, inputs.features_N_D, inputs.probs_N_C = ids, features_N_D, probs_N_C
        inputs.labeled_features_L_D = labeled_features_L_D
    return inputs


def _as_tensor(values) -> torch.Tensor | None:
    if values is None or isinstance(values, torch.Tensor):
        return values
    return torch.tensor(list(values), dtype=torch.float64)
