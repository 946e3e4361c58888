"""Config value rules sit beside their fields (`Annotated[float, POSITIVE]`): every numeric field declares one, every rule
is checked when a config is built, and renaming a field cannot separate it from its rule."""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing

import pytest

from stemjepa import config as C
from stemjepa.config import ANY, BETAS, FRACTION, MOMENTUM, NONNEGATIVE, POSITIVE, TrainConfig, field_rules, load_config
from stemjepa.errors import ConfigError

REFUSED = {POSITIVE: 0, NONNEGATIVE: -1, FRACTION: 1.5, BETAS: [0.9, 1.0], MOMENTUM: 0}  # a value each rule refuses


def numeric_fields(cls=TrainConfig, prefix: str = "") -> list[str]:
    """Dotted paths of every int, float or tuple-of-floats field (optional or not) of the config tree."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += numeric_fields(hint, f"{prefix}{f.name}.")
            continue
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        members = [t for t in typing.get_args(hint) if t is not type(None)] if union else [hint]
        base = members[0] if members else hint
        if base in (int, float) or typing.get_origin(base) is tuple:
            out.append(f"{prefix}{f.name}")
    return out


def test_every_numeric_field_declares_a_rule():
    rules = field_rules()
    missing = [path for path in numeric_fields() if path not in rules]
    assert not missing, f"numeric config fields without a rule (declare one, or ANY): {missing}"
    assert set(rules) <= set(numeric_fields())  # rules sit on numeric fields only


@pytest.mark.parametrize("path", sorted(p for p, r in field_rules().items() if r is not ANY))
def test_every_rule_is_checked_with_its_error_text(path):
    rule = field_rules()[path]
    bad = REFUSED[rule]
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: ") + ".* must be " + re.escape(rule.text) + "$"):
        load_config("tiny", [f"{path}={bad}"])


def test_error_texts_are_those_of_the_former_table():
    for override, message in [("optim.lr=-1", "optim.lr: -1.0 must be greater than 0"),
                              ("data.num_workers=-2", "data.num_workers: -2 must be 0 or more"),
                              ("jepa.ema_tau_end=2", "jepa.ema_tau_end: 2.0 must be between 0 and 1"),
                              ("optim.betas=[0.9, 1.5]", "optim.betas: (0.9, 1.5) must be two values in [0, 1)"),
                              ("model.center_momentum=0", "model.center_momentum: 0.0 must be greater than 0 and at most 1")]:
        with pytest.raises(ConfigError) as err:
            load_config("tiny", [override])
        assert str(err.value) == message
    assert load_config("tiny", ["seed=-3", "data.activity_db=-70"]).seed == -3  # ANY: no bound


def test_a_renamed_field_keeps_its_rule():
    """The rule is part of the field's annotation: a field moved under a new name (here: a copy of OptimConfig with
    `lr` renamed `learning_rate`) still carries it; no table of dotted names has to follow the rename."""
    fields = [(("learning_rate" if f.name == "lr" else f.name), typing.get_type_hints(C.OptimConfig, include_extras=True)
               [f.name], copy.copy(f)) for f in dataclasses.fields(C.OptimConfig)]  # a copy: make_dataclass renames it
    renamed = dataclasses.make_dataclass("RenamedOptim", fields)
    assert C.field_rule(renamed, "learning_rate") is POSITIVE
    assert field_rules(renamed)["learning_rate"] is POSITIVE and "lr" not in field_rules(renamed)
    assert not hasattr(C, "RANGES")  # the old table of dotted names is gone
