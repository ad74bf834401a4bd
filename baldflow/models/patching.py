"""Turning any user `nn.Module` (x -> logits [B, C]) into a BayesianModule: consistent MC dropout
in place of its dropout layers, and a prefix/head split found by tracing it with torch.fx."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from baldflow.models.base import BayesianModule
from baldflow.models.dropout import ConsistentDropout, ConsistentDropout2d, _ConsistentDropout
from baldflow.models.zoo import ModelSpecError, seeded_init
from baldflow.plugins import error_line

SUPPORTED_DROPOUT = (
    "supported: nn.Dropout (becomes ConsistentDropout) and nn.Dropout1d/2d/3d "
    "(become channel-wise ConsistentDropout2d)"
)

# Exact types only: a subclass of nn.Dropout may change what forward does, which a swap would lose.
_ELEMENTWISE_DROPOUT: tuple[type[nn.Module], ...] = (nn.Dropout,)
_CHANNEL_DROPOUT: tuple[type[nn.Module], ...] = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)

SPLITS = ("traced", "declared-head", "whole-module")


class PatchedModel(BayesianModule):
    """A user module made Bayesian by `bayesian_from_module`.

    `split` says how prefix and head were found: "traced" (torch.fx cut before the first
    dropout), "declared-head" (prefix = the module without the submodule named by `head`) or
    "whole-module" (no prefix: every layer runs K times). `split_detail` says why, in words.
    """

    fold_dropout_linear = True

    def __init__(
        self,
        prefix: nn.Module,
        head: nn.Module,
        *,
        spec: dict | None,
        split: str,
        split_detail: str,
    ):
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.prefix = prefix
        self.head = head
        self.spec = dict(spec or {})
        self.split = split
        self.split_detail = split_detail


class _LeafDropoutTracer(fx.Tracer):
    """Keeps consistent dropout layers as single graph nodes: traced through, the Python branch
    on `active_k` (0 while tracing) would be recorded as the identity and the dropout lost."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _ConsistentDropout) or super().is_leaf_module(m, module_qualified_name)


def _describe(name: str, module: nn.Module) -> str:
    return f"{name or '<root>'} ({type(module).__name__})"


def _set_submodule(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, attr = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _last_linear_name(module: nn.Module) -> str | None:
    names = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _insert_head_dropout(module: nn.Module, p: float) -> nn.Module:
    """`module` with `nn.Dropout(p)` run right before its last nn.Linear.

    The linear layer `L` becomes `nn.Sequential(nn.Dropout(p), L)`, so its state_dict keys gain
    a `.1` (`fc.weight` -> `fc.1.weight`). That is fine: pretrained weights are loaded into the
    user's module before it is patched, and the same call on a freshly built module renames the
    same keys the same way, so a saved patched model's state_dict loads into a rebuilt one.
    """
    if not 0.0 <= p < 1.0:
        raise ModelSpecError(f"model.head_dropout must be in [0, 1), got {p!r}")
    name = _last_linear_name(module)
    if name is None:
        raise ModelSpecError(
            f"model.head_dropout needs a linear layer to put the dropout before, but "
            f"{type(module).__name__} has no nn.Linear"
        )
    linear = module.get_submodule(name)
    wrapped = nn.Sequential(nn.Dropout(p), linear)
    if not name:  # the module is itself the linear layer
        return wrapped
    _set_submodule(module, name, wrapped)
    return module


def _swap_dropout_layers(module: nn.Module) -> nn.Module:
    """Replace the supported dropout layers by consistent ones (in place); refuse the others."""
    for name, layer in list(module.named_modules()):
        if isinstance(layer, _ConsistentDropout):
            continue
        kind = type(layer)
        if kind in _ELEMENTWISE_DROPOUT or kind in _CHANNEL_DROPOUT:
            p = float(layer.p)  # type: ignore[arg-type]
            if not 0.0 <= p < 1.0:
                raise ModelSpecError(
                    f"dropout layer {_describe(name, layer)} has p={p}; MC dropout needs p in "
                    "[0, 1)"
                )
            consistent: nn.Module
            if p == 0.0:
                # Samples nothing (ViT and Swin have such layers in their bodies): as a
                # consistent dropout it would only put the cut before every layer after it.
                consistent = nn.Identity()
            elif kind in _CHANNEL_DROPOUT:
                consistent = ConsistentDropout2d(p)
            else:
                consistent = ConsistentDropout(p)
            if not name:
                return consistent
            _set_submodule(module, name, consistent)
        elif isinstance(layer, nn.modules.dropout._DropoutNd):
            raise ModelSpecError(
                f"dropout layer {_describe(name, layer)} cannot be turned into consistent MC "
                f"dropout; {SUPPORTED_DROPOUT}"
            )
    return module


def _functional_dropout_nodes(graph: fx.Graph) -> list[fx.Node]:
    """Calls such as F.dropout or torch.dropout, except those with a constant p of 0 (DenseNet
    calls F.dropout with its drop_rate, 0 by default): they draw from the global RNG in training
    and cannot be given consistent masks."""
    found = []
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        if "dropout" not in getattr(node.target, "__name__", str(node.target)).lower():
            continue
        p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else None)
        if isinstance(p, (int, float)) and p == 0:
            continue
        found.append(node)
    return found


def _consistent_dropout_nodes(graph: fx.Graph, root: nn.Module) -> list[fx.Node]:
    return [
        node
        for node in graph.nodes
        if node.op == "call_module"
        and isinstance(root.get_submodule(str(node.target)), _ConsistentDropout)
    ]


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        stack.extend(current.all_input_nodes)
    return seen


def _trace_split(
    module: nn.Module, graph: fx.Graph
) -> tuple[fx.GraphModule, fx.GraphModule, str] | str:
    """(prefix, head, detail) cut at the input of the first dropout node, or the reason why the
    graph cannot be cut there."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return f"forward takes {len(placeholders)} inputs; a split needs exactly one"
    (placeholder,) = placeholders
    dropouts = _consistent_dropout_nodes(graph, module)
    if not dropouts:
        return "no dropout layer is called in the traced forward"
    first = dropouts[0]
    if not first.args or not isinstance(first.args[0], fx.Node):
        return f"the first dropout call {first.target} has no tensor input"
    cut = first.args[0]
    # The prefix computes the cut and whatever hangs off it without feeding the head (shape
    # asserts such as torchvision's ViT has); everything from the cut on is the head.
    prefix_nodes = _ancestors(cut) | {placeholder}
    for node in graph.nodes:
        if node.op == "output" or node in prefix_nodes or cut in node.all_input_nodes:
            continue
        if all(n in prefix_nodes for n in node.all_input_nodes):
            prefix_nodes.add(node)
    head_nodes = {
        n for n in graph.nodes if n not in prefix_nodes and n.op not in ("placeholder", "output")
    }
    # Parameters and buffers read directly (get_attr) hold no activation: both halves may read them.
    shared_attrs = {n for n in prefix_nodes if n.op == "get_attr"}
    allowed = head_nodes | shared_attrs | {cut}
    for node in graph.nodes:
        if node not in head_nodes and node.op != "output":
            continue
        outside = [n for n in node.all_input_nodes if n not in allowed]
        if outside:
            what = ", ".join(n.name for n in outside)
            return (
                f"{node.name} (after the first dropout {first.target}) uses {what} from before "
                "it (a skip connection or a second use of the input), so the layers before the "
                "dropout cannot run once per input"
            )
    leaked = [n for n in prefix_nodes if n in dropouts]
    if leaked:
        return f"dropout {leaked[0].target} runs before the cut"

    prefix_graph = fx.Graph()
    prefix_env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in prefix_nodes:
            prefix_env[node] = prefix_graph.node_copy(node, lambda n: prefix_env[n])
    prefix_graph.output(prefix_env[cut])

    head_graph = fx.Graph()
    head_env: dict[fx.Node, fx.Node] = {cut: head_graph.placeholder("features")}
    for node in graph.nodes:
        if node in head_nodes or (
            node in shared_attrs and any(u in head_nodes for u in node.users)
        ):
            head_env[node] = head_graph.node_copy(node, lambda n: head_env[n])
        elif node.op == "output":
            head_graph.node_copy(node, lambda n: head_env[n])
    # GraphModule installs each called submodule and read attribute under its qualified name,
    # sharing the objects: the parameters are the patched module's own (training updates what
    # scoring uses), and the state_dict keys follow the module's structure deterministically.
    prefix = fx.GraphModule(module, prefix_graph, class_name="TracedPrefix")
    head = fx.GraphModule(module, head_graph, class_name="TracedHead")
    return prefix, head, f"cut before the first dropout {first.target} (prefix output {cut.name})"


def _declared_split(module: nn.Module, head: str) -> tuple[nn.Module, nn.Module, str]:
    try:
        head_module = module.get_submodule(head)
    except AttributeError:
        children = ", ".join(name for name, _ in module.named_children()) or "none"
        raise ModelSpecError(
            f"model.head {head!r} is not a submodule of {type(module).__name__} "
            f"(its top-level submodules: {children})"
        ) from None
    outside = [
        _describe(name, m)
        for name, m in module.named_modules()
        if isinstance(m, _ConsistentDropout) and not (name == head or name.startswith(head + "."))
    ]
    if outside:
        raise ModelSpecError(
            f"model.head {head!r} leaves dropout layer(s) {', '.join(outside[:5])} outside the "
            "head, where they would never sample; fix: name a head that holds every dropout "
            "layer, or none"
        )
    _set_submodule(module, head, nn.Identity())
    return module, head_module, f"prefix = the module with {head!r} replaced by nn.Identity"


def _eval_output(fn: Callable[[], torch.Tensor], modules: Sequence[nn.Module]) -> torch.Tensor:
    """fn() in eval mode with no autograd graph, restoring each module's mode afterwards."""
    modes = [[m.training for m in module.modules()] for module in modules]
    for module in modules:
        module.eval()
    try:
        with torch.no_grad():
            return fn()
    finally:
        for module, module_modes in zip(modules, modes, strict=True):
            for m, mode in zip(module.modules(), module_modes, strict=True):
                m.training = mode


def bayesian_from_module(
    module: nn.Module,
    *,
    head: str | None = None,
    head_dropout: float | None = None,
    sample_input: torch.Tensor | None = None,
    spec: dict | None = None,
) -> PatchedModel:
    """A BayesianModule computing `module` (x -> logits [B, C]) with consistent MC dropout.

    `module` is patched in place and its parameters become the returned model's (use the
    returned model, not `module`, afterwards): `head_dropout` first inserts `nn.Dropout(p)`
    before its last nn.Linear; then every nn.Dropout becomes ConsistentDropout and every
    nn.Dropout1d/2d/3d ConsistentDropout2d (those with p = 0 become nn.Identity; other dropout
    kinds, functional ones included, are refused with ModelSpecError). The prefix/head split, in
    order of preference:

    - "traced": torch.fx traces the module (in eval mode, so training-only branches such as
      auxiliary outputs are left out) and cuts before the first dropout, when nothing after the
      cut uses anything before it but the cut itself;
    - "declared-head": the submodule named `head` is the head and the module with it replaced by
      nn.Identity the prefix (right when `head` is applied last, to the module's output; a head
      that leaves a dropout layer outside it is refused);
    - "whole-module": no prefix and the whole module as head; correct but every layer runs K
      times.

    With `sample_input` (a small batch), the split is checked: head(prefix(x)) must equal the
    module's eval-mode output. A declared head that fails raises ModelSpecError.
    """
    if head_dropout is not None:
        module = _insert_head_dropout(module, float(head_dropout))
    module = _swap_dropout_layers(module)

    reference_B_C = None
    if sample_input is not None:
        try:
            reference_B_C = _eval_output(lambda: module(sample_input), [module])
        except Exception as error:  # noqa: BLE001 (any failure of user code)
            raise ModelSpecError(
                f"{type(module).__name__} failed on the sample input of shape "
                f"{list(sample_input.shape)}: {error_line(error)}"
            ) from error

    # Traced while in eval mode (see the docstring); every submodule's mode is restored.
    tracer = _LeafDropoutTracer()
    modes = [m.training for m in module.modules()]
    module.eval()
    try:
        graph: fx.Graph | None = tracer.trace(module)
        trace_failure = ""
    except Exception as error:  # noqa: BLE001 (fx raises TraceError, TypeError, ... on user code)
        graph = None
        trace_failure = f"torch.fx cannot trace {type(module).__name__}: {error_line(error)}"
    finally:
        for m, mode in zip(module.modules(), modes, strict=True):
            m.training = mode

    if graph is not None:
        functional = _functional_dropout_nodes(graph)
        if functional:
            node = functional[0]
            raise ModelSpecError(
                f"{type(module).__name__} calls functional dropout "
                f"({getattr(node.target, '__name__', node.target)} at graph node {node.name}), "
                "which cannot be made consistent; use a dropout layer instead "
                f"({SUPPORTED_DROPOUT})"
            )
    if not any(isinstance(m, _ConsistentDropout) for m in module.modules()):
        raise ModelSpecError(
            f"{type(module).__name__} has no dropout layer (with p > 0), so MC dropout has "
            "nothing to sample; "
            "fix: --set model.head_dropout=0.5 (inserts one before its last linear layer)"
        )

    candidates: list[tuple[str, nn.Module, nn.Module, str]] = []
    reasons: list[str] = []
    if graph is not None:
        try:
            traced = _trace_split(module, graph)
        except Exception as error:  # noqa: BLE001 (building the graph modules from user code)
            traced = f"the traced graph cannot be split: {error_line(error)}"
        if isinstance(traced, str):
            reasons.append(traced)
        else:
            candidates.append(("traced", *traced))
    else:
        reasons.append(trace_failure)

    for split, prefix, head_module, detail in candidates:
        model = PatchedModel(prefix, head_module, spec=spec, split=split, split_detail=detail)
        if sample_input is None or _matches(model, sample_input, reference_B_C):
            return model
        reasons.append("the traced split does not reproduce the module's output")

    why = "; ".join(reasons)
    if head:
        prefix, head_module, detail = _declared_split(module, head)
        model = PatchedModel(
            prefix,
            head_module,
            spec=spec,
            split="declared-head",
            split_detail=f"{detail} ({why})",
        )
        if sample_input is not None and not _matches(model, sample_input, reference_B_C):
            raise ModelSpecError(
                f"model.head {head!r} is not applied last in {type(module).__name__}: the "
                "prefix and head computed from it do not reproduce the module's output; fix: "
                "a different model.head, or none"
            )
        return model
    return PatchedModel(
        nn.Identity(),
        module,
        spec=spec,
        split="whole-module",
        split_detail=f"no prefix, every layer runs K times ({why})",
    )


def _matches(model: PatchedModel, x: torch.Tensor, reference_B_C: torch.Tensor | None) -> bool:
    try:
        logits_B_C = _eval_output(lambda: model.head(model.prefix(x)), [model])
    except Exception:  # noqa: BLE001 (a wrong split may fail in any way)
        return False
    return (
        isinstance(reference_B_C, torch.Tensor)
        and isinstance(logits_B_C, torch.Tensor)
        and logits_B_C.shape == reference_B_C.shape
        and torch.allclose(logits_B_C, reference_B_C, atol=1e-5)
    )


def check_model_outputs(
    model: BayesianModule, input_shape: Sequence[int], num_classes: int, *, label: str
) -> None:
    """Raise a one-line ModelSpecError (starting with `label`) unless `model` maps two zero
    inputs of `input_shape` to finite logits [2, num_classes].

    Runs prefix and head directly (deterministic pass: eval mode, dropout off, no graph) so the
    message can show the logits' own shape; the model's mode is restored."""
    input_shape = tuple(int(s) for s in input_shape)
    reference = next(
        (t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), None
    )
    x = torch.zeros(
        2,
        *input_shape,
        device=reference.device if reference is not None else "cpu",
        dtype=reference.dtype if reference is not None else torch.float32,
    )
    try:
        logits = _eval_output(lambda: model._run_head(model.prefix(x), 0), [model])
    except Exception as error:  # noqa: BLE001 (any failure of user code)
        raise ModelSpecError(
            f"{label}: the model fails on input of shape [2, {', '.join(map(str, input_shape))}]"
            f": {error_line(error)}"
        ) from error
    if not isinstance(logits, torch.Tensor):
        raise ModelSpecError(
            f"{label}: the model returns a {type(logits).__name__}, not a logits tensor "
            f"[2, {num_classes}]"
        )
    if tuple(logits.shape) != (2, num_classes):
        raise ModelSpecError(
            f"{label}: the model's logits have shape {list(logits.shape)} for 2 inputs, "
            f"expected [2, {num_classes}] (one logit per class)"
        )
    if not bool(torch.isfinite(logits).all()):
        raise ModelSpecError(f"{label}: the model's logits on zero inputs are not finite (NaN/inf)")


def torchvision_model(arch: str, num_classes: int, *, seed: int = 0, **options: Any) -> nn.Module:
    """torchvision classification architecture `arch` with `num_classes` outputs, randomly
    initialised from `seed` alone (torch's global RNG state is left as it was).

    Never downloads anything: pretrained weights come from a model.weights FILE, so an options
    key "weights" is refused. The classifier is not resized here (see replace_last_linear)."""
    import torchvision.models as tv_models

    bad = sorted(key for key in options if key.startswith("weights"))
    if bad:
        raise ModelSpecError(
            f"torchvision option {bad[0]!r} is not accepted: pretrained weights come from a "
            "file (model.weights: FILE.pt/.pth/.safetensors), never a download"
        )
    names = tv_models.list_models(module=tv_models)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.5)
        hint = f"close names: {', '.join(close)}" if close else f"e.g. {', '.join(names[:5])}"
        raise ModelSpecError(f"unknown torchvision architecture {arch!r}; {hint}")
    with seeded_init(seed):
        try:
            return tv_models.get_model(arch, weights=None, num_classes=int(num_classes), **options)
        except (TypeError, ValueError) as error:
            raise ModelSpecError(
                f"invalid options for torchvision architecture {arch!r}: {error_line(error)}"
            ) from error


def replace_last_linear(
    module: nn.Module, num_classes: int, *, generator: torch.Generator | None = None
) -> str:
    """Give `module`'s last nn.Linear (named_modules order) `num_classes` outputs, in place, and
    return its qualified name (its keys may then be missing from a pretrained file).

    The layer is replaced by a fresh one, initialised as nn.Linear does but from `generator`
    (default: seeded with 0), only when its out_features differs."""
    name = _last_linear_name(module)
    if name is None:
        raise ModelSpecError(f"{type(module).__name__} has no nn.Linear layer to resize")
    if not name:
        raise ModelSpecError(f"{type(module).__name__} is itself the linear layer to resize")
    old = module.get_submodule(name)
    assert isinstance(old, nn.Linear)
    if old.out_features == num_classes:
        return name
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    # Built on the meta device so that no global-RNG draw happens, then initialised from
    # `generator` exactly as nn.Linear.reset_parameters would.
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device="meta")
    new = new.to_empty(device=factory["device"]).to(dtype=factory["dtype"])
    with torch.no_grad():
        nn.init.kaiming_uniform_(new.weight, a=math.sqrt(5), generator=generator)
        if new.bias is not None:
            bound = 1.0 / math.sqrt(old.in_features) if old.in_features > 0 else 0.0
            nn.init.uniform_(new.bias, -bound, bound, generator=generator)
    _set_submodule(module, name, new)
    return name
