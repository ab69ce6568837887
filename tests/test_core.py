"""Config round trips, the registry's errors, atomic writes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from brainsurgeon._io import atomic_dir, write_json
from brainsurgeon.config import Config
from brainsurgeon.errors import ConfigError, RunDirError, check_fraction
from brainsurgeon.registry import Registry


@dataclass(frozen=True)
class Toy(Config):
    amount: float = 0.5
    nm: tuple[int, int] = (2, 4)
    name: str = "x"


def test_config_round_trip_and_unknown_field():
    cfg = Toy(amount=0.9, nm=(1, 4))
    assert Toy.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown Toy field\(s\) \['amout'\]"):
        Toy.from_dict({"amout": 0.3})
    with pytest.raises(ConfigError, match="field 'name' must be str"):
        Toy.from_dict({"name": 3})
    assert Toy.from_dict({"amount": 1}).amount == 1.0


def test_registry_lists_valid_names_and_suggests():
    reg: Registry = Registry("criterion")
    reg.register("magnitude", "|w|")(object)
    reg.register("obd", "OBD")(object)
    with pytest.raises(
        ConfigError,
        match=r"unknown criterion 'magnitud'; valid: magnitude, obd.*"
        r"Did you mean 'magnitude'",
    ):
        reg.get("magnitud")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("obd", "again")
    assert reg.describe() == {"magnitude": "|w|", "obd": "OBD"}


def test_check_fraction():
    assert check_fraction("amount", 0.5) == 0.5
    with pytest.raises(ConfigError, match=r"amount must lie in \(0, 1\), got 1.0"):
        check_fraction("amount", 1.0)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        write_json(tmp / "a.json", {"x": 1})
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_and_force_replaces(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RunDirError, match="already exists; choose another --out or pass --force"):
        with atomic_dir(target):
            pass
    with atomic_dir(target, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
