"""The backend's nn names (Module, Parameter, containers, state dicts) and its device / probe / kernel registry API."""
import numpy as np
import pytest

import ops_reference as ref
from mmx import backend, nn, ops
from ops_harness import error


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm = nn.RMSNorm(width)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x):
        return x + self.proj(self.norm(x))


class Tiny(nn.Module):
    """Layers in a ModuleDict keyed by global index (a pipeline stage keeps the names), heads in a ModuleList."""

    def __init__(self, width=4, layer_ids=("0", "1")):
        super().__init__()
        self.embed = nn.Embedding(10, width)
        self.layers = nn.ModuleDict({layer_id: Block(width) for layer_id in layer_ids})
        self.heads = nn.ModuleList([nn.Linear(width, 3), nn.Linear(width, 2)])
        self.scale = nn.Parameter(ops.ones((1,)))

    def forward(self, ids):
        hidden = self.embed(ids)
        for layer in self.layers.values():
            hidden = layer(hidden)
        return self.heads[0](hidden) * self.scale


EXPECTED_NAMES = ["embed.weight", "layers.0.norm.weight", "layers.0.proj.weight", "layers.1.norm.weight",
                  "layers.1.proj.weight", "heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.1.bias",
                  "scale"]


def _random_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(tuple(p.shape)).astype(np.float32)
            for name, p in nn.named_parameters(model)}


def test_state_dict_keys_are_dotted_attribute_paths():
    model = Tiny()
    assert sorted(nn.state_dict(model)) == sorted(EXPECTED_NAMES)
    assert sorted(name for name, _ in nn.named_parameters(model)) == sorted(EXPECTED_NAMES)
    assert sorted(nn.state_dict(Tiny(layer_ids=("7",)))) == sorted(
        [n.replace("layers.0", "layers.7") for n in EXPECTED_NAMES if not n.startswith("layers.1")])


def test_load_state_dict_then_forward_matches_numpy():
    model = Tiny()
    weights = _random_weights(model)
    missing, unexpected = nn.load_state_dict(model, weights)
    assert missing == [] and unexpected == []
    back = {name: ops.to_numpy(t) for name, t in nn.state_dict(model).items()}
    for name, array in weights.items():
        assert back[name].tobytes() == array.tobytes(), name
    ids = np.array([[1, 2, 9], [0, 0, 3]])
    hidden = weights["embed.weight"][ids].astype(np.float64)
    for layer in ("0", "1"):
        normed = ref.rms_norm(hidden, weights[f"layers.{layer}.norm.weight"], 1e-6)
        hidden = hidden + normed @ weights[f"layers.{layer}.proj.weight"].T
    want = ref.linear(hidden, weights["heads.0.weight"], weights["heads.0.bias"]) * weights["scale"]
    got = ops.to_numpy(model(ops.tensor(ids))).astype(np.float64)
    assert error(got, want) < 1e-5
    # tensors (not only numpy arrays) load too, and a reload reproduces the output
    again = Tiny()
    nn.load_state_dict(again, nn.state_dict(model))
    assert ops.to_numpy(again(ops.tensor(ids))).tobytes() == ops.to_numpy(model(ops.tensor(ids))).tobytes()


def test_load_state_dict_reports_missing_unexpected_and_shapes():
    model = Tiny()
    weights = _random_weights(model)
    del weights["heads.1.bias"]
    weights["layers.5.norm.weight"] = np.ones(4, np.float32)
    with pytest.raises(Exception, match=r"heads\.1\.bias") as err:
        nn.load_state_dict(model, weights)
    assert "layers.5.norm.weight" in str(err.value)
    missing, unexpected = nn.load_state_dict(model, weights, strict=False)
    assert missing == ["heads.1.bias"] and unexpected == ["layers.5.norm.weight"]
    assert ops.to_numpy(nn.state_dict(model)["scale"]).tobytes() == weights["scale"].tobytes()
    wrong = _random_weights(model)
    wrong["heads.0.weight"] = np.zeros((5, 4), np.float32)
    with pytest.raises(Exception, match=r"heads\.0\.weight"):
        nn.load_state_dict(model, wrong)


def test_requires_grad_inference_mode_and_device():
    model = Tiny()
    params = dict(nn.named_parameters(model))
    nn.set_requires_grad(params["embed.weight"], False)
    assert not params["embed.weight"].requires_grad and params["scale"].requires_grad
    nn.set_requires_grad(params["embed.weight"], True)
    assert params["embed.weight"].requires_grad
    with nn.inference_mode():
        out = model(ops.tensor(np.array([[1, 2]])))
    assert tuple(out.shape) == (1, 2, 3)
    assert nn.to_device(model, backend.get().device()) is not None


def test_backend_module_api():
    module = backend.get()
    assert module.NAME == backend.name()
    assert isinstance(module.device(), str) and module.device().split(":")[0] in ("cpu", "cuda", "npu", "ascend",
                                                                                   "gpu")
    version, devices = module.probe.describe()
    assert isinstance(version, str) and version and "cpu" in devices
    assert "eager" in module.kernels.available_attention_kernels()
    assert "loop" in module.kernels.available_moe_kernels()
    with pytest.raises(ValueError, match="unknown device"):
        module.set_device("tpu")
