"""The quantize verb: dispatch on config types, quant_config by name, old config records,
loss= for fine-tuning, device=, train/eval flags, tensor selection, no import circles."""

from __future__ import annotations

import ast
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainsurgeon.data.core import Dataset
from brainsurgeon.errors import ConfigError, NumericalError
from brainsurgeon.pruning.masks import set_mask
from brainsurgeon.quantization import (
    QUANTIZERS,
    KMeansConfig,
    UniformConfig,
    config_from_dict,
    quant_config,
    quantize,
)
from brainsurgeon.quantization.registry import HANDLERS, handler_for
from brainsurgeon.runs import load_run
from brainsurgeon.state import parametrizations_of


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))


def _regression() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    return Dataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]))


def _untouched(model: nn.Module) -> bool:
    return not any(parametrizations_of(m, "weight") for m in model if isinstance(m, nn.Linear))


def test_each_method_config_type_is_registered_to_its_handler():
    for name in QUANTIZERS:
        method = QUANTIZERS.get(name)
        assert method.config.METHOD == name
        assert HANDLERS[method.config] is method.handler
        assert handler_for(method.config()) is method.handler
        assert type(quant_config(name)) is method.config
    with pytest.raises(ConfigError, match="quantize needs a method config .*KMeansConfig"):
        quantize(_mlp(), "kmeans")


def test_quant_config_is_strict_and_round_trips():
    with pytest.raises(ConfigError, match="unknown quantizer 'kmean'.*Did you mean 'kmeans'"):
        quant_config("kmean")
    with pytest.raises(ConfigError, match="kmeans has no option.* stages; its options: bits"):
        quant_config("kmeans", stages=3)
    config = quant_config("residual", bits=3, stages=3, exclude=["fc3"])
    assert config.exclude == ("fc3",) and config.stages == 3
    record = config.to_dict()
    assert record["method"] == "residual" and record["type"] == "ResidualConfig"
    assert config_from_dict(record) == config
    with pytest.raises(ConfigError, match="KMeansConfig is the config of 'kmeans'"):
        KMeansConfig.from_dict(record)


def test_old_one_config_for_all_records_still_load():
    old = {
        "type": "QuantConfig",
        "version": 1,
        "method": "kmeans",
        "bits": 5,
        "per_layer_bits": {"fc3": 3},
        "skip": ["conv"],
        "granularity": "per-channel",
        "block_width": 4,
        "stages": 2,
        "samples": 1024,
        "init": "density",
        "finetune_epochs": 2,
        "seed": 3,
    }
    config = config_from_dict(old)
    expected = KMeansConfig(
        bits=5, per_layer_bits={"fc3": 3}, exclude=("conv*",), init="density", finetune_epochs=2
    )
    assert config == expected.replace(seed=3)


def test_finetuning_minimises_the_given_loss():
    data = _regression()
    calls = []

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(output.shape))
        return F.mse_loss(output[:, 0], target)

    config = quant_config("kmeans", bits=3, finetune_epochs=3, finetune_lr=0.01)
    plain = _mlp()
    quantize(plain, config.replace(finetune_epochs=0), data)
    tuned = _mlp()
    result = quantize(tuned, config, data, loss=loss)
    assert calls and all(shape[1:] == (1,) for shape in calls)
    with torch.no_grad():
        before, after = (F.mse_loss(m(data.x)[:, 0], data.y).item() for m in (plain, tuned))
    assert after < 0.9 * before
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    named = quantize(_mlp(), config.replace(finetune_epochs=1), data, loss="mse")
    assert named.history[0]["train_loss"] > 0


def test_bad_loss_or_device_is_refused_before_anything_changes():
    data = _regression()
    config = quant_config("kmeans", bits=3, finetune_epochs=1)
    model = _mlp()
    with pytest.raises(ConfigError, match="unknown loss 'mse2'"):
        quantize(model, config, data, loss="mse2")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        quantize(model, config, data, device="tpu")
    assert _untouched(model)
    with pytest.raises(ConfigError, match="a loss must return one scalar"):
        quantize(model, config, data, loss=lambda out, y: (out[:, 0] - y) ** 2)


@pytest.mark.parametrize("method", ["kmeans", "gptq"])
def test_a_failure_while_fine_tuning_undoes_everything(method):
    data = _regression()
    model = _mlp()
    set_mask(model[0], "weight", model[0].weight.detach().abs() > 0.1)  # a chain below
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model.eval()(data.x)
    config = quant_config(method, bits=3, finetune_epochs=1)  # gptq rewrites float weights too

    def diverging(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output[:, 0], target) * float("nan")

    with pytest.raises(NumericalError, match="the loss is nan"):
        quantize(model, config, data, loss=diverging)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [type(p).__name__ for p in parametrizations_of(model[0], "weight")] == ["Mask"]
    assert not parametrizations_of(model[3], "weight")
    with torch.no_grad():
        assert torch.equal(model(data.x), out)
    quantize(model, config.replace(finetune_epochs=0), data)  # and it quantizes afterwards


@pytest.mark.parametrize(
    "config", [quant_config("uniform", finetune_epochs=1), quant_config("gptq")]
)
def test_every_submodule_keeps_its_train_eval_flag(config):
    model = _mlp().eval()
    model[2].train()  # dropout on inside an eval model: model.train(was) would lose this
    modules = list(model.modules())
    flags = [m.training for m in modules]
    quantize(model, config, _regression(), loss="mse", device="cpu")
    assert [m.training for m in modules] == flags
    assert next(model.parameters()).device.type == "cpu"


def test_layers_exclude_and_per_layer_bits_choose_tensors_by_glob():
    model = nn.Sequential()
    for name in ("fc1", "fc2", "fc3", "out"):
        model.add_module(name, nn.Linear(8, 8))
    bits = {"fc*": 3, "fc3.weight": 5}  # the longest matching key wins
    config = UniformConfig(bits=4, layers=("fc*",), exclude=("fc2",), per_layer_bits=bits)
    result = quantize(model, config)
    assert result.bits == {"fc1.weight": 3, "fc3.weight": 5}
    assert not parametrizations_of(model.fc2, "weight")
    assert not parametrizations_of(model.out, "weight")
    other = config.replace(per_layer_bits={"fc9": 3}, layers=("out",), exclude=())
    with pytest.raises(ConfigError, match="per-layer bits key 'fc9' matches no quantized layer"):
        quantize(copy.deepcopy(model), other)


def test_every_quantization_module_imports_on_its_own():
    """A fresh interpreter per module would cost a torch import each; instead drop every
    brainsurgeon module from sys.modules before importing the next (torch stays cached)."""
    root = Path(__file__).resolve().parents[1] / "src" / "brainsurgeon" / "quantization"
    names = sorted(
        "brainsurgeon."
        + ".".join(p.relative_to(root.parent).with_suffix("").parts).replace(".__init__", "")
        for p in root.rglob("*.py")
    )
    assert "brainsurgeon.quantization.methods.kmeans" in names and len(names) > 12
    script = (
        "import importlib, sys, torch\n"
        f"for name in {names!r}:\n"
        "    for key in [k for k in sys.modules if k.startswith('brainsurgeon')]:\n"
        "        del sys.modules[key]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.argv))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root.parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def _module_imports(path: Path, package: str, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``path`` imports at module level (not in functions, not
    under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        if node.level == 0:
            base = ""
        target = f"{base}.{node.module}" if node.module and base else (node.module or base)
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            out.add(sub if sub in known else target)
    return out & known


def test_quantization_module_graph_has_no_cycle():
    root = Path(__file__).resolve().parents[1] / "src" / "brainsurgeon"
    files = {}
    for p in (root / "quantization").rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = (p, name if parts[-1] == "__init__" else name.rsplit(".", 1)[0])
    graph = {n: _module_imports(p, pkg, set(files)) for n, (p, pkg) in files.items()}
    assert "brainsurgeon.quantization.registry" in graph["brainsurgeon.quantization.methods.kmeans"]

    def visit(node: str, stack: list[str]) -> None:
        assert node not in stack, " -> ".join([*stack[stack.index(node) :], node])
        for nxt in graph[node]:
            visit(nxt, [*stack, node])

    for name in graph:
        visit(name, [])


OLD_RUNS = Path(__file__).parent / "data" / "quantization_v0_runs"


@pytest.mark.parametrize("method", sorted(QUANTIZERS.names()))
def test_runs_written_with_the_one_config_for_all_still_load(method):
    """Run directories written by brainsurgeon 0.1 (``QuantConfig``): same outputs, and their
    ``compression.quantization.config`` record reads as the method's own config."""
    run = load_run(OLD_RUNS / method)
    x = torch.tensor(run.metrics["input"])
    with torch.no_grad():
        assert torch.allclose(run.model(x), torch.tensor(run.metrics["output"]), atol=1e-6)
    record = run.config["compression"]["quantization"]["config"]
    assert record["type"] == "QuantConfig"
    config = config_from_dict(record)
    assert type(config) is QUANTIZERS.get(method).config
    assert config.bits == record["bits"]
    with pytest.raises(ConfigError, match="already quantized"):
        quantize(run.model, config)


def test_nan_weights_are_refused_before_quantizing():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match=r"0.weight holds 1 NaN or infinite"):
        quantize(model, quant_config("kmeans", bits=2), _regression(), progress=False)
    assert _untouched(model)
