"""Any user nn.Module made Bayesian (dropout swap, fx prefix/head split), output checks and
pretrained weights files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from baldflow.models import (
    BayesianModule,
    ConsistentDropout,
    ConsistentDropout2d,
    ModelSpecError,
    WeightsError,
    bayesian_from_module,
    check_model_outputs,
    load_pretrained,
    read_pretrained,
    replace_last_linear,
    torchvision_model,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=seeded(seed))


def init(module: nn.Module, seed: int = 0) -> nn.Module:
    """Weights from a private generator (no global RNG)."""
    generator = seeded(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return module


def mlp() -> nn.Sequential:
    return init(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    )


class HandBuilt(BayesianModule):
    def __init__(self, source: nn.Sequential):
        super().__init__()
        self.spec = {}
        self.prefix = nn.Sequential(source[0], source[1], source[2])
        self.head = nn.Sequential(ConsistentDropout(0.5), source[4])


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc(self.drop(h))


class SkipNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 3)
        self.skip = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        return self.fc(self.drop(h)) + self.skip(x)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            h = torch.relu(h)
        return self.fc(h)


class NoDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.body(x)))


def test_patched_scores_equal_a_hand_built_bayesian_module():
    source = mlp()
    expected_model = HandBuilt(source).eval()
    patched = bayesian_from_module(mlp(), sample_input=randn(2, 1, 8, 8)).eval()
    assert patched.split == "traced"
    x = randn(6, 1, 8, 8)
    expected_model.resample_masks(5, seeded(0))
    patched.resample_masks(5, seeded(0))
    with torch.no_grad():
        expected_B_K_C = expected_model(x, 5)
        log_probs_B_K_C = patched(x, 5)
    assert log_probs_B_K_C.shape == (6, 5, 3)
    torch.testing.assert_close(log_probs_B_K_C, expected_B_K_C)
    # The K samples differ (dropout is on), and embed sees the last linear's input.
    assert not torch.allclose(log_probs_B_K_C[:, 0], log_probs_B_K_C[:, 1])
    torch.testing.assert_close(patched.embed(x), expected_model.embed(x))


def test_custom_module_is_traced_and_split_before_its_dropout():
    original = init(ConvNet())
    x = randn(3, 1, 8, 8)
    with torch.no_grad():
        reference_B_C = original.eval()(x)
    model = bayesian_from_module(original, sample_input=x, spec={"name": "user"}).eval()
    assert model.split == "traced"
    assert model.spec == {"name": "user"}
    assert any(isinstance(m, nn.Conv2d) for m in model.prefix.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in model.head.modules())
    assert any(isinstance(m, ConsistentDropout) for m in model.head.modules())
    assert model.prefix(x).shape == (3, 256)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0)[:, 0], torch.log_softmax(reference_B_C, -1))
    # Deterministic keys: the same call on a fresh module gives the same state_dict keys.
    again = bayesian_from_module(init(ConvNet()))
    assert list(again.state_dict()) == list(model.state_dict())
    again.load_state_dict(model.state_dict())


def test_skip_connection_across_the_dropout_falls_back_to_the_whole_module():
    original = init(SkipNet())
    x = randn(4, 8)
    with torch.no_grad():
        reference_B_C = original.eval()(x)
    model = bayesian_from_module(original, sample_input=x[:2]).eval()
    assert model.split == "whole-module"
    assert "skip connection" in model.split_detail
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0)[:, 0], torch.log_softmax(reference_B_C, -1))
    model.resample_masks(3, seeded(0))
    assert model(x, 3).shape == (4, 3, 3)
    # A declared head that leaves the dropout outside it would never sample.
    with pytest.raises(ModelSpecError, match=r"leaves dropout layer\(s\) drop \(ConsistentDropout"):
        bayesian_from_module(init(SkipNet()), head="fc")


def test_a_declared_head_that_is_not_applied_last_is_refused():
    # fc is not the last step of SkipNet (the skip is added after it).
    class SkipHead(SkipNet):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 3))
            self.drop = nn.Identity()

    with pytest.raises(ModelSpecError, match="not applied last"):
        bayesian_from_module(init(SkipHead()), head="fc", sample_input=randn(2, 8))


def test_untraceable_module_uses_the_declared_head_or_the_whole_module():
    x = randn(4, 8)
    original = init(Untraceable())
    with torch.no_grad():
        reference_B_C = original.eval()(x)
    declared = bayesian_from_module(original, head="fc", sample_input=x[:2]).eval()
    assert declared.split == "declared-head"
    assert "torch.fx cannot trace" in declared.split_detail
    assert isinstance(declared.head[1], nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(declared(x, 0)[:, 0], torch.log_softmax(reference_B_C, -1))
    assert declared.embed(x).shape == (4, 16)
    declared.resample_masks(2, seeded(0))
    assert declared(x, 2).shape == (4, 2, 3)

    whole = bayesian_from_module(init(Untraceable()), sample_input=x[:2])
    assert whole.split == "whole-module"
    assert isinstance(whole.prefix, nn.Identity)

    with pytest.raises(ModelSpecError, match="not a submodule"):
        bayesian_from_module(init(Untraceable()), head="classifier")


def test_no_dropout_is_refused_unless_head_dropout_inserts_one():
    with pytest.raises(ModelSpecError, match="NoDropout has no dropout layer") as error:
        bayesian_from_module(init(NoDropout()))
    assert "model.head_dropout=0.5" in str(error.value)

    x = randn(3, 8)
    original = init(NoDropout())
    with torch.no_grad():
        reference_B_C = original.eval()(x)
    model = bayesian_from_module(original, head_dropout=0.3, sample_input=x).eval()
    assert model.split == "traced"
    dropout, linear = model.head.get_submodule("fc.0"), model.head.get_submodule("fc.1")
    assert isinstance(dropout, ConsistentDropout) and dropout.p == 0.3
    assert isinstance(linear, nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0)[:, 0], torch.log_softmax(reference_B_C, -1))
    model.resample_masks(4, seeded(0))
    assert model(x, 4).shape == (3, 4, 3)


@pytest.mark.parametrize("layer", [nn.AlphaDropout(0.2), nn.FeatureAlphaDropout(0.2)])
def test_other_dropout_kinds_are_refused_by_name(layer):
    module = nn.Sequential(nn.Linear(8, 8), layer, nn.Linear(8, 3))
    with pytest.raises(ModelSpecError, match=rf"1 \({type(layer).__name__}\).*supported"):
        bayesian_from_module(module)


def test_functional_dropout_is_refused():
    class Functional(NoDropout):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.body(x))
            return self.fc(nn.functional.dropout(h, 0.5, self.training))

    with pytest.raises(ModelSpecError, match="functional dropout"):
        bayesian_from_module(Functional(), head_dropout=0.5)


def test_channel_dropout_becomes_consistent_dropout2d():
    cnn = init(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Dropout2d(0.5),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 3),
        )
    )
    model = bayesian_from_module(cnn, sample_input=randn(2, 1, 6, 6)).eval()
    assert isinstance(model.head.get_submodule("2"), ConsistentDropout2d)
    x = randn(3, 1, 6, 6)
    model.resample_masks(3, seeded(0))
    assert model(x, 3).shape == (3, 3, 3)

    conv1d = init(
        nn.Sequential(nn.Conv1d(2, 4, 3), nn.Dropout1d(0.5), nn.Flatten(), nn.Linear(4 * 8, 3))
    )
    model1d = bayesian_from_module(conv1d, sample_input=randn(2, 2, 10)).eval()
    dropout = model1d.head.get_submodule("1")
    assert isinstance(dropout, ConsistentDropout2d)
    model1d.resample_masks(3, seeded(0))
    seen = {}
    dropout.register_forward_hook(lambda _m, args, out: seen.update(inp=args[0], out=out))
    assert model1d(randn(2, 2, 10), 3).shape == (2, 3, 3)
    # One mask value per channel: every position of a channel is kept or dropped together.
    dropped_BK_C = (seen["out"] == 0).all(dim=2)
    kept_BK_C = (seen["out"] != 0).all(dim=2)
    assert bool((dropped_BK_C | kept_BK_C).all()) and bool(dropped_BK_C.any())


def test_torchvision_resnet18_with_a_resized_classifier_and_head_dropout():
    resnet = torchvision_model("resnet18", 1000)
    assert replace_last_linear(resnet, 4) == "fc"
    assert resnet.fc.out_features == 4
    x = randn(2, 3, 32, 32)
    model = bayesian_from_module(resnet, head_dropout=0.2, sample_input=x).eval()
    assert model.split == "traced"
    assert model.prefix(x).shape == (2, 512)
    output = next(n for n in model.prefix.graph.nodes if n.op == "output")
    assert output.args[0].name == "flatten"
    assert not any(isinstance(m, nn.Conv2d) for m in model.head.modules())
    model.resample_masks(3, seeded(0))
    with torch.no_grad():
        assert model(x, 3).shape == (2, 3, 4)
    check_model_outputs(model, (3, 32, 32), 4, label="model resnet18")


def test_torchvision_errors():
    with pytest.raises(ModelSpecError, match="resnet18"):
        torchvision_model("resnet19", 10)
    with pytest.raises(ModelSpecError, match="model.weights"):
        torchvision_model("resnet18", 10, weights="DEFAULT")


def test_replace_last_linear_draws_no_global_randomness():
    state = torch.random.get_rng_state()
    module = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 6))
    torch.random.set_rng_state(state)
    assert replace_last_linear(module, 6) == "1"  # already 6 outputs: kept
    assert replace_last_linear(module, 2) == "1"
    assert torch.equal(torch.random.get_rng_state(), state)
    again = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 6))
    replace_last_linear(again, 2)
    assert torch.equal(again[1].weight, module[1].weight)


def test_read_pretrained_pt_and_safetensors(tmp_path: Path):
    from safetensors.torch import save_file

    state = {"w": randn(3, 2), "b": randn(3)}
    pt = tmp_path / "weights.pt"
    torch.save(state, pt)
    read, digest = read_pretrained(pt)
    assert digest == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)

    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": state, "epoch": 3}, checkpoint)
    assert torch.equal(read_pretrained(checkpoint)[0]["w"], state["w"])

    st = tmp_path / "weights.safetensors"
    save_file(state, st)
    read, digest = read_pretrained(st)
    assert digest == hashlib.sha256(st.read_bytes()).hexdigest()
    assert torch.equal(read["b"], state["b"])


class Payload:
    """A pickled object: loading it would run arbitrary code."""


@pytest.mark.parametrize("content", [Payload(), {"a": Payload()}])
def test_read_pretrained_refuses_pickled_objects(tmp_path: Path, content):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(WeightsError, match=r"bad\.pt holds pickled Python objects .*Payload"):
        read_pretrained(path)


def test_read_pretrained_refuses_non_state_dicts_and_other_suffixes(tmp_path: Path):
    path = tmp_path / "numbers.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(WeightsError, match=r"numbers\.pt holds a dict with a non-tensor"):
        read_pretrained(path)
    listed = tmp_path / "list.pt"
    torch.save([randn(2)], listed)
    with pytest.raises(WeightsError, match="holds a list"):
        read_pretrained(listed)
    with pytest.raises(WeightsError, match=r"accepted: \.pt, \.pth, \.safetensors"):
        read_pretrained(tmp_path / "weights.bin")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="broken.safetensors"):
        read_pretrained(broken)


def test_load_pretrained_names_missing_unexpected_and_mismatched_keys():
    module = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    state = dict(module.state_dict())
    del state["1.bias"]
    state["extra.weight"] = randn(2)
    with pytest.raises(WeightsError) as error:
        load_pretrained(module, state, path="w.pt")
    message = str(error.value)
    assert "\n" not in message
    assert message == "w.pt: missing keys 1.bias; unexpected keys extra.weight"

    wide = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 1000))
    with pytest.raises(WeightsError, match=r"1\.weight \[1000, 5\] in the file vs \[3, 5\]"):
        load_pretrained(module, wide.state_dict(), path="w.pt")
    # The resized classifier's keys may be missing or of another shape.
    before = module[1].weight.clone()
    load_pretrained(module, wide.state_dict(), path="w.pt", allow_missing_prefixes=("1",))
    assert torch.equal(module[1].weight, before)
    assert torch.equal(module[0].weight, wide[0].weight)

    many = {f"x{i}": randn(1) for i in range(8)}
    with pytest.raises(WeightsError, match=r"unexpected keys x0, x1, x2, x3, x4 \(\+3 more\)"):
        load_pretrained(module, {**module.state_dict(), **many}, path="w.pt")


def test_check_model_outputs_refuses_wrong_shapes_nan_and_wrong_inputs():
    class Wide(NoDropout):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 4))

    model = bayesian_from_module(init(Wide()))
    check_model_outputs(model, (8,), 4, label="model user")
    with pytest.raises(ModelSpecError, match=r"^model user: .*shape \[2, 4\].*expected \[2, 3\]"):
        check_model_outputs(model, (8,), 3, label="model user")

    class NaN(Wide):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * float("nan")

    with pytest.raises(ModelSpecError, match="^model nan: .*not finite"):
        check_model_outputs(bayesian_from_module(NaN()), (8,), 4, label="model nan")
    with pytest.raises(ModelSpecError, match=r"^model user: .*input of shape \[2, 5\]") as error:
        check_model_outputs(model, (5,), 4, label="model user")
    assert "\n" not in str(error.value)
    assert model.training  # the mode is restored


def test_training_mode_sends_gradients_to_the_prefix():
    model = bayesian_from_module(init(ConvNet()))
    model.train()
    model.set_train_generator(seeded(1))
    log_probs_B_K_C = model(randn(3, 1, 8, 8), 1)
    assert log_probs_B_K_C.shape == (3, 1, 3)
    log_probs_B_K_C[:, 0, 0].sum().backward()
    conv = next(m for m in model.prefix.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    # The prefix's parameters are the model's: an optimizer over model.parameters() trains them.
    assert any(p is conv.weight for p in model.parameters())


def test_zero_p_dropout_layers_become_identities():
    module = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.0), nn.Linear(8, 3))
    with pytest.raises(ModelSpecError, match=r"no dropout layer \(with p > 0\)"):
        bayesian_from_module(module)
    model = bayesian_from_module(
        nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.0), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    )
    assert model.split == "traced"
    assert isinstance(model.prefix.get_submodule("1"), nn.Identity)
    assert [type(m) for m in model.dropout_layers()] == [ConsistentDropout]


def test_a_dropout_linear_head_runs_as_one_product_with_the_same_log_probs():
    """The folded head (K masked weight matrices stacked) gives the K-fold pass's log-probs
    up to float rounding; the zoo's networks keep the K-fold pass."""
    from baldflow.models import ResNet18

    module = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Dropout(0.4), nn.Linear(8, 3))
    model = bayesian_from_module(module).eval()
    assert model._dropout_then_linear() is not None
    model.resample_masks(6, torch.Generator().manual_seed(3))
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        folded = model(x, 6)
        model.fold_dropout_linear = False
        repeated = model(x, 6)
    assert folded.shape == (5, 6, 3)
    assert torch.allclose(folded, repeated, atol=1e-6)
    assert not torch.equal(folded[:, 0], folded[:, 1])  # the masks differ per sample k
    assert not ResNet18.fold_dropout_linear
