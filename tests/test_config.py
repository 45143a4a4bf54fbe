"""Run configs: every unknown key and bad value is a ConfigError naming it and the
alternatives; dotted overrides are YAML-typed and build nested sections; YAML files load."""

from __future__ import annotations

import dataclasses

import pytest

from gacd.config import RunConfig, load_run_config
from gacd.errors import ConfigError
from gacd.methods import method_class
from gacd.options import apply_overrides, from_dict, parse_override, to_dict


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    return str(info.value)


# -- unknown keys ------------------------------------------------------------------------------
def test_unknown_top_level_key_names_it_and_lists_the_allowed_keys():
    message = _error(["bogus=1"])
    assert "'bogus'" in message
    allowed = message.split("allowed:", 1)[1]
    for key in ("seed", "device", "out", "data", "model", "method", "attack", "optim", "eval"):
        assert key in allowed


def test_unknown_nested_key_names_its_full_path():
    message = _error(["data.foo=1"])
    assert "'data.foo'" in message
    allowed = message.split("allowed:", 1)[1]
    for key in ("data.name", "data.batch_size", "data.val_fraction", "data.flip"):
        assert key in allowed
    assert "'optim.lrr'" in _error(["optim.lrr=0.1"])


def test_unknown_method_option_names_it_and_the_method_options():
    message = _error(["method.name=trades", "method.bogus=1"])
    assert "'method.bogus'" in message
    assert "method.beta" in message.split("allowed:", 1)[1]


def test_unknown_option_of_a_method_without_options_still_lists_something():
    message = _error(["method.name=pgd_at", "method.bogus=1"])
    assert "'method.bogus'" in message
    assert "method.name" in message.split("allowed:", 1)[1]


# -- bad values --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.epochs=abc", ["optim.epochs", "'abc'", "integer"]),
        ("optim.epochs=2.5", ["optim.epochs", "2.5", "integer"]),
        ("optim.epochs=true", ["optim.epochs", "True", "integer"]),
        ("optim.lr=fast", ["optim.lr", "'fast'", "number"]),
        (
            "optim.schedule=linear",
            ["optim.schedule", "'linear'", "'cosine'", "'step'", "'constant'"],
        ),
        ("eval.split=valid", ["eval.split", "'valid'", "'test'", "'val'", "'train'"]),
        ("data.flip=maybe", ["data.flip", "'maybe'", "bool", "null"]),
        ("data.batch_size=[1]", ["data.batch_size", "[1]", "integer"]),
        ("optim.milestones=[0.5, x]", ["optim.milestones[1]", "'x'", "number"]),
        ("data=3", ["data", "3", "mapping"]),
        ("method.name=nope", ["method.name", "'nope'", "pgd_at", "trades", "natural"]),
    ],
)
def test_bad_values_name_the_value_and_the_alternatives(override, expected):
    message = _error([override])
    for part in expected:
        assert part in message, (part, message)


def test_method_section_needs_a_name():
    assert "method.name is required" in _error(["method={temperature: 0.2}"])


# -- override parsing --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("optim.lr=0.05", 0.05),
        ("optim.epochs=3", 3),
        ("amp=false", False),
        ("data.flip=true", True),
        ("teacher=null", None),
        ("optim.milestones=[0.3, 0.6]", [0.3, 0.6]),
        ("model.kwargs={spatial: 2, hidden: 256}", {"spatial": 2, "hidden": 256}),
        ("out=runs/x", "runs/x"),
        ("out='3'", "3"),
        ("out=", ""),
        ("out=a=b", "a=b"),  # only the first '=' separates
    ],
)
def test_override_values_are_parsed_as_yaml(text, value):
    path, parsed = parse_override(text)
    assert path == text.split("=", 1)[0].split(".")
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("text", ["optim.lr", "=1", "optim..lr=1", ".lr=1", "x=[1, 2"])
def test_malformed_overrides_are_config_errors(text):
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_scientific_notation_learning_rate():
    assert load_run_config(None, ["optim.lr=1e-3", "optim.weight_decay=5e-4"]).optim.lr == 1e-3


def test_overrides_create_nested_sections_and_do_not_mutate_the_input():
    base = {"optim": {"lr": 0.1}}
    out = apply_overrides(
        base, ["model.kwargs.hidden=256", "model.kwargs.spatial=2", "optim.epochs=5", "seed=3"]
    )
    assert out == {
        "optim": {"lr": 0.1, "epochs": 5},
        "model": {"kwargs": {"hidden": 256, "spatial": 2}},
        "seed": 3,
    }
    assert base == {"optim": {"lr": 0.1}}
    # Later overrides win, and merge into a section set as a whole earlier.
    out = apply_overrides(
        {}, ["model.kwargs={spatial: 2}", "model.kwargs.hidden=8", "seed=1", "seed=2"]
    )
    assert out == {"model": {"kwargs": {"spatial": 2, "hidden": 8}}, "seed": 2}
    with pytest.raises(ConfigError, match="'optim' is not a section"):
        apply_overrides({}, ["optim=3", "optim.lr=0.1"])


def test_overrides_build_a_typed_run_config():
    config = load_run_config(
        None,
        [
            "model.kwargs.hidden=256",
            "model.kwargs.spatial=2",
            "optim.lr=1",  # an int where a float is expected becomes a float
            "optim.milestones=[1, 0.5]",
            "method.name=trades",
            "method.beta=3",
            "data.crop_padding=null",
        ],
    )
    assert config.model.kwargs == {"hidden": 256, "spatial": 2}
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.optim.milestones == [1.0, 0.5]
    assert all(isinstance(m, float) for m in config.optim.milestones)
    # The method section is the method's own typed options, parsed when the config is read.
    assert config.method == method_class("trades").Options(beta=3.0)
    assert config.data.crop_padding is None
    assert config.optim.epochs == RunConfig().optim.epochs  # untouched keys keep defaults


def test_defaults_without_file_or_overrides():
    assert load_run_config(None) == RunConfig()
    assert load_run_config(None, []).method == method_class("pgd_at").Options()


# -- YAML files --------------------------------------------------------------------------------
def test_yaml_file_loads_and_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "seed: 4\n"
        "data:\n  name: digits\n  batch_size: 64\n  flip: true\n"
        "model:\n  arch: digits_cnn_small\n  kwargs: {hidden: 16}\n"
        "method:\n  name: trades\n  beta: 2.0\n"
        "optim:\n  epochs: 3\n  schedule: step\n  milestones: [0.5]\n"
    )
    config = load_run_config(path, ["optim.epochs=7", "method.beta=4.5"])
    assert config.seed == 4
    assert (config.data.name, config.data.batch_size, config.data.flip) == ("digits", 64, True)
    assert config.model.arch == "digits_cnn_small" and config.model.kwargs == {"hidden": 16}
    assert config.method == method_class("trades").Options(beta=4.5)
    assert (config.optim.epochs, config.optim.schedule, config.optim.milestones) == (
        7,
        "step",
        [0.5],
    )


def test_yaml_file_is_checked_like_overrides(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  name: digits\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"'data\.colour'"):
        load_run_config(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "config file not found"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("data: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_files(tmp_path, content, match):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_run_config(path)


def test_empty_yaml_file_gives_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_run_config(path) == RunConfig()


def test_to_dict_round_trips(tmp_path):
    config = load_run_config(None, ["model.kwargs={spatial: 2}", "method.name=natural", "seed=9"])
    assert from_dict(RunConfig, to_dict(config)) == config
    assert dataclasses.asdict(config) == to_dict(config)


def test_the_config_a_run_writes_loads_back(digits_teacher_path):
    config = load_run_config(digits_teacher_path.parent / "config.yaml")
    assert config.method.name == "pgd_at"
    assert config.model.kwargs == {"spatial": 2, "hidden": 256}
    assert config.out == str(digits_teacher_path.parent)


def test_a_method_option_override_keeps_the_default_method_name():
    # Without a config file the method section starts from the default (pgd_at), so an
    # option override adds to it rather than replacing it (and the error names the method).
    message = _error(["method.bogus=1"])
    assert "method 'pgd_at'" in message and "method.name" in message
    assert load_run_config(None, ["method.name=trades", "method.beta=3"]).method == method_class(
        "trades"
    ).Options(beta=3.0)
