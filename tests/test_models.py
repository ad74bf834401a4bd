"""Consistent MC dropout, the deterministic prefix and the model zoo."""

from __future__ import annotations

import pytest
import torch

from baldflow.inference import predict_log_probs
from baldflow.models import (
    MODELS,
    BayesianModule,
    DropoutStateError,
    ModelSpecError,
    build_model,
)

# Small inputs keep every architecture fast on two CPU cores.
SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "batchbald-cnn": (1, 28, 28), "resnet18": (3, 8, 8)}
FAST = ["mlp", "cnn", "batchbald-cnn"]


def make(name: str, seed: int = 0, dropout: float = 0.5) -> BayesianModule:
    model = build_model(name, SHAPES[name], 10, dropout=dropout, seed=seed)
    return model.eval()


def inputs(name: str, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *SHAPES[name], generator=torch.Generator().manual_seed(seed))


class RowCounter:
    """Forward hook counting the calls and input rows a submodule sees."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.rows = 0
        module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        self.rows += args[0].shape[0]


@pytest.mark.parametrize("name", FAST)
def test_same_input_gives_same_k_outputs_alone_or_in_a_batch(name):
    model = make(name)
    model.resample_masks(6, torch.Generator().manual_seed(3))
    x = inputs(name, 9)
    with torch.no_grad():
        batch = model(x, 6)
        for i in (0, 4, 8):
            alone = model(x[i : i + 1], 6)
            torch.testing.assert_close(alone[0], batch[i], rtol=1e-5, atol=1e-6)
        # The same input at another position of another batch gets the same K outputs too.
        shuffled = model(torch.cat([x[5:], x[:5]]), 6)
    torch.testing.assert_close(shuffled[4], batch[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FAST)
def test_same_log_probs_across_chunk_sizes(name):
    model = make(name)
    x = inputs(name, 23)
    by_chunk = [
        predict_log_probs(model, x, 5, torch.Generator().manual_seed(11), chunk_size=size)
        for size in (7, 700)
    ]
    torch.testing.assert_close(by_chunk[0], by_chunk[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FAST + ["resnet18"])
def test_k_samples_differ_and_masks_change_when_resampled(name):
    model = make(name)
    x = inputs(name, 4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.resample_masks(4, generator)
        first = model(x, 4)
        again = model(x, 4)
        model.resample_masks(4, generator)
        resampled = model(x, 4)
        model.resample_masks(4, torch.Generator().manual_seed(0))
        replayed = model(x, 4)
    assert first.shape == (4, 4, 10)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.allclose(first[:, a], first[:, b]), (a, b)
    assert not torch.allclose(first, resampled)
    torch.testing.assert_close(first, replayed, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAST + ["resnet18"])
def test_deterministic_prefix_runs_once_per_input(name):
    model = make(name)
    prefix, head = RowCounter(model.prefix), RowCounter(model.head)
    model.resample_masks(10, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(inputs(name, 3), 10)
    assert out.shape == (3, 10, 10)
    assert (prefix.calls, prefix.rows) == (1, 3)
    assert (head.calls, head.rows) == (1, 30)


def test_prefix_rows_equal_pool_size_over_a_chunked_pass():
    model = make("cnn")
    prefix = RowCounter(model.prefix)
    predict_log_probs(model, inputs("cnn", 50), 20, torch.Generator().manual_seed(0), chunk_size=7)
    assert prefix.rows == 50
    assert prefix.calls == 8


def test_cnn_keeps_both_convolutions_in_the_prefix():
    model = build_model("cnn", (1, 28, 28), 10)
    convs = [m for m in model.prefix.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.head.modules())
    # Same fc sizes as the BatchBALD MNIST CNN: 64 x 4 x 4 = 1024 -> 128 -> C.
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 128), (128, 10)]
    reference = build_model("batchbald-cnn", (1, 28, 28), 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in reference.head.modules()) == 1


def test_k_zero_is_the_deterministic_dropout_off_pass():
    model = make("mlp")
    x = inputs("mlp", 5)
    no_dropout = build_model("mlp", SHAPES["mlp"], 10, dropout=0.0, seed=0).eval()
    with torch.no_grad():
        out = model(x, 0)
        # No masks were drawn: k = 0 must not need them.
        model.resample_masks(3, torch.Generator().manual_seed(1))
        out_after = model(x, 0)
        expected = no_dropout(x, 0)
    assert out.shape == (5, 1, 10)
    torch.testing.assert_close(out, out_after, rtol=0, atol=0)
    torch.testing.assert_close(out, expected)


def test_zero_dropout_gives_identical_samples():
    model = make("cnn", dropout=0.0)
    model.resample_masks(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(inputs("cnn", 2), 3)
    torch.testing.assert_close(out[:, 0], out[:, 2])


def test_training_mode_draws_a_fresh_mask_per_row_from_the_given_generator():
    model = make("mlp").train()
    x = inputs("mlp", 1).expand(6, *SHAPES["mlp"])
    with pytest.raises(DropoutStateError, match="set_train_generator"):
        model(x, 1)
    model.set_train_generator(torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(x, 1)[:, 0]
        model.set_train_generator(torch.Generator().manual_seed(5))
        replay = model(x, 1)[:, 0]
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(out, replay, rtol=0, atol=0)


def test_inference_needs_masks_for_the_asked_k():
    model = make("mlp")
    x = inputs("mlp", 2)
    with pytest.raises(DropoutStateError, match="resample_masks"):
        model(x, 3)
    model.resample_masks(3, torch.Generator().manual_seed(0))
    with pytest.raises(DropoutStateError, match="k=4"):
        model(x, 4)


def test_batchnorm_stays_in_eval_mode_during_mc_inference():
    model = make("resnet18")
    bn = model.prefix.bn1
    before = bn.running_mean.clone()
    first = predict_log_probs(model, inputs("resnet18", 4), 3, torch.Generator().manual_seed(0))
    second = predict_log_probs(
        model, inputs("resnet18", 4), 3, torch.Generator().manual_seed(0), chunk_size=1
    )
    torch.testing.assert_close(bn.running_mean, before, rtol=0, atol=0)
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-6)


def test_build_model_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = (build_model("cnn", (1, 8, 8), 10, seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), state)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.prefix[0].weight, c.prefix[0].weight)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_spec_rebuilds_the_model(name):
    model = make(name, seed=3)
    rebuilt = build_model(**model.spec, seed=99)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = inputs(name, 3)
    out = predict_log_probs(model, x, 4, torch.Generator().manual_seed(2))
    out_rebuilt = predict_log_probs(rebuilt, x, 4, torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, out_rebuilt, rtol=0, atol=0)
    assert rebuilt.spec == model.spec


def test_cnn_is_sized_from_the_input_shape():
    for shape in [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 5, 6)]:
        model = build_model("cnn", shape, 4).eval()
        with torch.no_grad():
            assert model(torch.zeros(2, *shape), 0).shape == (2, 1, 4)
    with pytest.raises(ModelSpecError, match="at least 4x4"):
        build_model("cnn", (1, 3, 3), 4)
    with pytest.raises(ModelSpecError, match=r"input_shape \(channels, height, width\)"):
        build_model("cnn", (64,), 4)


def test_unknown_model_and_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="model plug-in 'vgg'.*cnn.*mlp.*resnet18"):
        build_model("vgg", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="dropout must be in"):
        build_model("mlp", (1, 8, 8), 10, dropout=1.0)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        build_model("mlp", (1, 8, 8), 1)
    with pytest.raises(ValueError, match="invalid options for model 'mlp'"):
        build_model("mlp", (1, 8, 8), 10, depth=3)


# ---------------------------------------------------------------------------- saved weights
def claim_cuda(path, out):
    """A copy of a torch.save file whose tensors say they were saved on cuda:0.

    torch.save (pickle protocol 2) records each storage's device as a length-prefixed string
    in data.pkl; a file written on a GPU machine differs from a CPU one exactly there.
    """
    import zipfile

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(info.filename, data)
    return out


@pytest.mark.parametrize("name", FAST)
def test_weights_saved_on_a_gpu_load_on_the_cpu(name, tmp_path):
    from baldflow.models import load_weights

    model = make(name)
    torch.save(model.state_dict(), tmp_path / "cpu.pt")
    gpu_file = claim_cuda(tmp_path / "cpu.pt", tmp_path / "gpu.pt")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(gpu_file, weights_only=True)
    state = load_weights(gpu_file)
    assert all(t.device.type == "cpu" for t in state.values())
    rebuilt = build_model(**model.spec, seed=99).eval()
    rebuilt.load_state_dict(state)
    x = inputs(name, 3)
    out = predict_log_probs(model, x, 4, torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        predict_log_probs(rebuilt, x, 4, torch.Generator().manual_seed(2)), out
    )


class _Payload:
    def __reduce__(self):
        return (print, ("a weights file ran code",))


def test_loading_weights_never_runs_pickled_code(tmp_path, capsys):
    from baldflow.models import WeightsError, load_weights

    torch.save({"w": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match=r"evil\.pt is not a weights file torch can read"):
        load_weights(tmp_path / "evil.pt")
    assert "ran code" not in capsys.readouterr().out
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="holds a list, not a state_dict"):
        load_weights(tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tmp_path / "absent.pt")


def test_every_torch_load_in_the_project_maps_to_a_device_and_loads_weights_only():
    """Weights of a round may be read back on another machine (a GPU one saved them): a
    torch.load without map_location fails on a CPU-only machine, and one without
    weights_only=True would run whatever the file pickled."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("baldflow", "flows", "tasks", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"
                ):
                    continue
                keywords = {k.arg: k.value for k in node.keywords}
                weights_only = keywords.get("weights_only")
                if "map_location" not in keywords or not (
                    isinstance(weights_only, ast.Constant) and weights_only.value is True
                ):
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    offenders.append(f"{where}: {ast.unparse(node)}")
    assert not offenders, (
        "torch.load without map_location= and weights_only=True (use "
        "baldflow.models.load_weights):\n" + "\n".join(offenders)
    )
