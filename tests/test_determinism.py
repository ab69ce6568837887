"""The same command with the same seed gives bit-identical masks, weights, codebooks and
metrics on CPU (test_safety.py checks prune and plain quantize; this adds fine-tuned
quantization, distillation, compare and a recipe, and metrics beside the weights). A second
seed must change the result where the seed drives a random choice, so the comparison is not
vacuous; on CUDA a run records ``"determinism": {"deterministic": false, ...}``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import killharness as kh
from brainsurgeon.cli.main import main

COMMANDS = {
    "quantize-finetuned": (
        ["quantize", "{run}", "--method", "kmeans", "--bits", "3", "--init", "random",
         "--finetune-epochs", "2"],
        True,
    ),
    "quantize-product": (
        ["quantize", "{run}", "--method", "product", "--bits", "4", "--block-width", "4",
         "--exclude", "fc3"],
        True,
    ),
    "distill": (["distill", "--teacher", "{run}", "--student", "mlp:64-16-10", "--epochs", "2"],
                True),
    "compare": (
        ["compare", "{run}", "--criteria", "random,magnitude", "--sparsities", "0.7",
         "--finetune-epochs", "1", "--samples", "64"],
        False,  # test_experiments.py checks that seeds change the random cells
    ),
    "prune-iterative": (
        ["prune", "{run}", "--criterion", "random", "--amount", "0.6", "--schedule",
         "iterative", "--rounds", "2", "--finetune-epochs", "1"],
        True,
    ),
}  # fmt: skip


def _run(argv: list[str], run, out, seed: int) -> None:
    args = [a.replace("{run}", str(run)) for a in argv]
    assert main([*args, "--seed", str(seed), "--quiet", "--out", str(out)]) == 0


@pytest.mark.parametrize("name", COMMANDS)
def test_same_seed_same_bits_other_seed_differs(name, trained_run, tmp_path):
    argv, seed_matters = COMMANDS[name]
    runs = (("a", 5), ("b", 5), ("c", 6)) if seed_matters else (("a", 5), ("b", 5))
    for label, seed in runs:
        (tmp_path / label).mkdir()
        _run(argv, trained_run, tmp_path / label / "out", seed)
    a, b, c = (tmp_path / k / "out" for k in "abc")
    assert kh.compare_outputs(a, b) == []  # weights, masks, codebooks, metrics, cells
    if seed_matters:
        assert kh.compare_outputs(a, c) != []


def test_quantized_state_holds_masks_and_codebooks(trained_run, tmp_path):
    """The bytes compared above include the codebooks (and masks) themselves."""
    _run(COMMANDS["quantize-finetuned"][0], trained_run, tmp_path / "q", 1)
    keys = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert any("centroids" in k or "codebook" in k for k in keys), sorted(keys)


def test_cuda_runs_are_marked_not_deterministic(monkeypatch):
    from brainsurgeon import utils

    assert utils.determinism("cpu") == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    record = utils.determinism("cuda")["determinism"]
    assert record["deterministic"] is False and "index_add_" in record["reason"]
