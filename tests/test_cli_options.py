"""CLI options built from the config dataclasses; the one --option KEY=VALUE parser."""

from __future__ import annotations

import argparse
import re

import pytest

from brainsurgeon.cli.main import main
from brainsurgeon.cli.options import add_config_options, config_from_args, parse_options
from brainsurgeon.cli.prune import FLAGS, add_prune_options, prune_config
from brainsurgeon.errors import ConfigError
from brainsurgeon.pruning import CRITERIA, SCHEDULES, SELECTORS, PruneConfig, masks_of
from brainsurgeon.runs import load_run


def _prune_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_prune_options(parser)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(list(argv))


def test_defaults_come_from_the_config():
    assert prune_config(_prune_args()) == PruneConfig()


def test_flags_map_to_fields():
    config = prune_config(
        _prune_args(
            "--exclude-first",
            "--no-adjust-dropout",
            "--include-bias",
            "--nm",
            "1:4",
            "--scheme",
            "nm",
            "--layers",
            "fc1,fc2.*",
            "--exclude",
            "fc3",
            "--finetune-lr",
            "0.01",
        )
    )
    assert config.include_first is False and config.adjust_dropout is False
    assert config.include_bias is True and config.nm == (1, 4)
    assert config.layers == ("fc1", "fc2.*") and config.exclude == ("fc3",)
    assert config.finetune_lr == 0.01


def test_help_lists_the_registries(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in [*CRITERIA.names(), *SELECTORS.names(), *SCHEDULES.names(), "mse", "--layers"]:
        assert name in text, name


def test_every_scalar_field_of_a_config_gets_an_option():
    parser = argparse.ArgumentParser()
    added = add_config_options(parser, PruneConfig, flags=FLAGS)
    assert {"amount", "criterion", "finetune_epochs", "include_first", "lam"} <= set(added)
    assert "criterion_options" not in added  # a mapping: the command parses it itself
    args = parser.parse_args(["--amount", "0.7"])
    assert config_from_args(PruneConfig, args, flags=FLAGS) == PruneConfig(amount=0.7)
    with pytest.raises(ValueError, match="has no field"):
        add_config_options(parser, PruneConfig, fields=["amout"])


def test_option_values_are_json_and_checked_against_types():
    assert parse_options(["hessian=ggn", "k=2", "f=0.5", "on=true"]) == {
        "hessian": "ggn",
        "k": 2,
        "f": 0.5,
        "on": True,
    }
    assert parse_options(["damp=1"], types={"damp": float}) == {"damp": 1.0}
    with pytest.raises(ConfigError, match=r"--option block_size: expected an integer, got 'abc'"):
        parse_options(["block_size=abc"], types={"block_size": int})
    with pytest.raises(ConfigError, match=r"--option damp: expected a number, got 'x'"):
        parse_options(["damp=x"], types={"damp": float})
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_options(["hessian"])


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--criterion", "obs", "--option", "damp=big"], "--option damp: expected a number"),
        (["--loss", "hinge"], "unknown loss 'hinge'; valid: cosine, cross_entropy, l1, mse"),
        (["--layers", "conv*"], "layers pattern 'conv\\*' matches no compressible layer"),
    ],
)
def test_prune_cli_refuses_bad_values_in_one_line(trained_run, tmp_path, extra, message, capsys):
    out = tmp_path / "never"
    code = main(["prune", str(trained_run), "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not out.exists()


def test_prune_cli_layers_and_exclude_choose_the_tensors(trained_run, tmp_path):
    out = tmp_path / "p"
    argv = ["prune", str(trained_run), "--out", str(out), "--quiet", "--amount", "0.5"]
    assert main([*argv, "--layers", "fc*", "--exclude", "fc3", "--loss", "cross_entropy"]) == 0
    assert set(masks_of(load_run(out).model)) == {"fc1.weight", "fc2.weight"}
