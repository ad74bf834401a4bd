"""The Bayesian module: a deterministic prefix run once per input, a stochastic head run K times."""

from __future__ import annotations

import torch
from torch import fx, nn

from baldflow.models.dropout import ConsistentDropout, _ConsistentDropout


class BayesianModule(nn.Module):
    """An MC dropout network split into `prefix` (no dropout) and `head` (all the dropout).

    `forward(x_B_..., k)` runs `prefix` on the B inputs once, repeats its features K times and
    runs `head` on the B*K rows, returning `log_probs_B_K_C`. The split is where the scoring speed
    comes from: the expensive layers never see the K copies. `k = 0` is the deterministic pass
    (dropout off) and returns `[B, 1, C]`.

    Subclasses set `self.prefix`, `self.head` and `self.spec` (the keyword arguments of
    `build_model` that rebuild the architecture; weights come from `load_state_dict`).
    """

    prefix: nn.Module
    head: nn.Module
    spec: dict

    def dropout_layers(self) -> list[_ConsistentDropout]:
        return [m for m in self.modules() if isinstance(m, _ConsistentDropout)]

    def set_train_generator(self, generator: torch.Generator | None) -> None:
        """Generator for the fresh per-row masks of training-mode dropout (must live on the
        device the model runs on)."""
        for layer in self.dropout_layers():
            layer.train_generator = generator

    def resample_masks(self, k: int, generator: torch.Generator) -> None:
        """Draw a new set of K inference masks, used by every eval-mode forward with this k until
        the next call. One acquisition round calls this once per scoring pass."""
        if k < 1:
            raise ValueError(f"resample_masks needs k >= 1 MC samples, got {k}")
        for layer in self.dropout_layers():
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            layer.set_mask_seed(k, seed)

    def last_linear(self) -> nn.Linear:
        """The head's final `nn.Linear`, whose output is the logits and whose input is the
        penultimate features that embedding-based strategies (BADGE, CoreSet) work on."""
        linears = [m for m in self.head.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise TypeError(f"{type(self).__name__}.head has no nn.Linear layer to embed before")
        return linears[-1]

    def _run_head(self, features_B_F: torch.Tensor, k: int) -> torch.Tensor:
        """logits_BK_C of the head on `features_B_F` repeated K times (K = max(k, 1))."""
        B = features_B_F.shape[0]
        repeats = max(k, 1)
        # expand + reshape: row b * K + j is input b under mask j, the layout the dropout expects.
        features_BK_F = features_B_F.unsqueeze(1).expand(B, repeats, *features_B_F.shape[1:])
        features_BK_F = features_BK_F.reshape(B * repeats, *features_B_F.shape[1:])
        layers = self.dropout_layers()
        for layer in layers:
            layer.active_k = k
        try:
            return self.head(features_BK_F)
        finally:
            for layer in layers:
                layer.active_k = 0

    def _penultimate(self, features_B_F: torch.Tensor) -> torch.Tensor:
        """The input of `last_linear` in the deterministic (k = 0, dropout off) head pass.

        Captured with a forward hook so that every head whose last step is a linear layer works
        without knowing its structure; the check that the hooked layer's output *is* the head's
        output refuses heads that transform the logits further (those features would not be the
        ones the last layer's gradient is taken against)."""
        last = self.last_linear()
        seen: dict[str, torch.Tensor] = {}

        def hook(_module, inputs, output):
            seen["input"], seen["output"] = inputs[0], output

        handle = last.register_forward_hook(hook)
        try:
            logits = self._run_head(features_B_F, 0)
        finally:
            handle.remove()
        if "output" not in seen or seen["output"] is not logits:
            raise TypeError(
                f"{type(self).__name__}.head does not end with its last nn.Linear; "
                "penultimate features are undefined"
            )
        return seen["input"].flatten(1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """`features_B_D`: the penultimate features (the input of the last linear layer) of the
        deterministic network, i.e. dropout off (inverted dropout already keeps expectations),
        eval mode (BatchNorm on running statistics), no autograd graph.

        BADGE builds its gradient embeddings and CoreSet its k-center distances on these; they
        use the mean network rather than one MC sample so the geometry does not depend on a
        mask draw. The previous train/eval mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self._penultimate(self.prefix(x))
        finally:
            self.train(was_training)

    def embed_and_log_probs(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(`features_B_D` as `embed`, `log_probs_B_K_C` as `forward(x, k)`) with the prefix run
        once for both. Runs in the caller's mode and grad state: streamed passes
        (`inference.embed_pool`) set eval and inference mode and draw the masks themselves."""
        if k < 0:
            raise ValueError(f"k (MC samples) must be >= 0, got {k}")
        features_B_F = self.prefix(x)
        penultimate_B_D = self._penultimate(features_B_F)
        logits_BK_C = self._run_head(features_B_F, k)
        log_probs_BK_C = torch.log_softmax(logits_BK_C, dim=-1)
        return penultimate_B_D, log_probs_BK_C.view(features_B_F.shape[0], max(k, 1), -1)

    # Whether a head of one dropout and one linear layer may be run as one matrix product
    # (`_folded_log_probs`). Set by the plug-in models (PatchedModel, HeadOnly); the zoo's
    # networks keep their arithmetic exactly as their committed results were computed.
    fold_dropout_linear = False

    def _dropout_then_linear(self) -> tuple[_ConsistentDropout, nn.Linear] | None:
        """The head's (dropout, linear) when the head is exactly that, else None."""
        head = self.head
        if isinstance(head, nn.Sequential):
            layers = list(head)
        elif isinstance(head, fx.GraphModule):
            nodes = [n for n in head.graph.nodes if n.op not in ("placeholder", "output")]
            if not all(n.op == "call_module" for n in nodes):
                return None
            if len(nodes) == 2 and nodes[1].args != (nodes[0],):
                return None
            layers = [head.get_submodule(str(n.target)) for n in nodes]
        else:
            return None
        if (
            len(layers) == 2
            # Element-wise dropout only: a channel mask is not a column scaling of the linear.
            and type(layers[0]) is ConsistentDropout
            and isinstance(layers[1], nn.Linear)
        ):
            return layers[0], layers[1]
        return None

    def _folded_log_probs(
        self, features_B_F: torch.Tensor, k: int, layers: tuple[_ConsistentDropout, nn.Linear]
    ) -> torch.Tensor:
        """log_probs_B_K_C of a dropout -> linear head without repeating the features K times:
        mask k scales the linear layer's input columns, so (x * m_k) W^T = x (W * m_k)^T, and
        the K masked weight matrices stacked are one [K*C, F] product. Equal to the K-fold
        pass up to float rounding; several times faster, since nothing of size B*K*F is made."""
        dropout, linear = layers
        masks_K_F = dropout._consistent_masks(features_B_F, k)
        weight_KC_F = (linear.weight.unsqueeze(0) * masks_K_F.unsqueeze(1)).reshape(
            -1, linear.in_features
        )
        B = features_B_F.shape[0]
        if linear.bias is None:
            logits_B_KC = features_B_F @ weight_KC_F.T
        else:
            logits_B_KC = torch.addmm(linear.bias.repeat(k), features_B_F, weight_KC_F.T)
        logits_B_K_C = logits_B_KC.view(B, k, linear.out_features)
        return logits_B_K_C - torch.logsumexp(logits_B_K_C, dim=-1, keepdim=True)

    def forward(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        if k < 0:
            raise ValueError(f"k (MC samples) must be >= 0, got {k}")
        features_B_F = self.prefix(x)
        if self.fold_dropout_linear and k > 0 and not self.training and features_B_F.ndim == 2:
            layers = self._dropout_then_linear()
            if layers is not None:
                return self._folded_log_probs(features_B_F, k, layers)
        logits_BK_C = self._run_head(features_B_F, k)
        log_probs_BK_C = torch.log_softmax(logits_BK_C, dim=-1)
        return log_probs_BK_C.view(features_B_F.shape[0], max(k, 1), -1)
