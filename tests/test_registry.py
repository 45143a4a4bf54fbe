"""The one registry mechanism, and the records it holds checked against what they describe:
each dataset record against what its reader returns, each architecture record against the
model it builds, each method class's label."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import torch

from format_writers import write_cifar10, write_cifar100, write_idx_mnist, write_stl10
from gacd.data import DATASETS, dataset_info, read_dataset, register_dataset
from gacd.engine.export import export_model, load_model
from gacd.errors import ConfigError, UnknownName
from gacd.experiments.report_format import arch_label, dataset_label, method_label
from gacd.methods import METHODS, Method, method_class, method_names, register_method
from gacd.models import MODELS, build_model, model_info, model_names, register_model
from gacd.registry import Registry


# -- the mechanism ---------------------------------------------------------------------------
def _fruit() -> Registry[int]:
    fruit: Registry[int] = Registry("fruit", key="basket.fruit")
    for i, name in enumerate(["apple", "banana", "cherry"]):
        fruit.register(name, i)
    return fruit


def test_registry_gets_lists_contains_and_iterates_in_registration_order() -> None:
    fruit = _fruit()
    assert fruit.get("banana") == 1
    assert fruit.names() == ["apple", "banana", "cherry"]
    assert list(fruit) == [0, 1, 2] and len(fruit) == 3
    assert "cherry" in fruit and "durian" not in fruit and None not in fruit and 3 not in fruit


def test_registry_refuses_a_duplicate_and_keeps_the_first() -> None:
    fruit = _fruit()
    with pytest.raises(ValueError, match="fruit 'apple' is registered twice"):
        fruit.register("apple", 99)
    assert fruit.get("apple") == 0 and len(fruit) == 3


@pytest.mark.parametrize("bad", ["", None, 3])
def test_registry_refuses_a_name_that_is_not_a_string(bad: object) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        _fruit().register(bad, 0)  # type: ignore[arg-type]


def test_unknown_name_says_kind_key_name_suggestion_and_every_known_name() -> None:
    with pytest.raises(UnknownName) as caught:
        _fruit().get("banan")
    err = caught.value
    assert isinstance(err, ConfigError)  # the CLI prints it as one line, exit code 2
    assert str(err) == (
        "basket.fruit: unknown fruit 'banan' (did you mean 'banana'?); known: apple, banana, cherry"
    )
    assert (err.kind, err.name, err.key, err.suggestions) == (
        "fruit",
        "banan",
        "basket.fruit",
        ["banana"],
    )


def test_unknown_name_without_a_close_one_suggests_nothing() -> None:
    with pytest.raises(UnknownName) as caught:
        _fruit().get("zzz")
    assert caught.value.suggestions == [] and "did you mean" not in str(caught.value)
    with pytest.raises(UnknownName, match=r"unknown fruit 7;"):  # a YAML number, say
        _fruit().get(7)  # type: ignore[arg-type]


def test_unknown_name_lists_several_suggestions_and_survives_pickling() -> None:
    err = UnknownName("architecture", "wrn_34", ["wrn_34_10", "wrn_34_2", "resnet18"], "model.arch")
    assert "(did you mean 'wrn_34_2' or 'wrn_34_10'?)" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is UnknownName and str(again) == str(err)
    assert again.suggestions == err.suggestions


# -- one error for every registry ------------------------------------------------------------
def _build(name: str) -> object:
    return build_model(name, in_channels=3, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3)


LOOKUPS: dict[str, tuple[Callable[[str], object], str, str, str]] = {
    # registry: (lookup, misspelt name, config key, the suggestion expected first)
    "architecture": (_build, "resnt18", "model.arch", "resnet18"),
    "dataset": (read_dataset, "cifr10", "data.name", "cifar10"),
    "method": (method_class, "kdd", "method.name", "kd"),
}


@pytest.mark.parametrize("kind", LOOKUPS)
def test_every_registry_answers_a_misspelt_name_with_the_same_error(kind: str) -> None:
    lookup, bad, key, first = LOOKUPS[kind]
    with pytest.raises(UnknownName) as caught:
        lookup(bad)
    err = caught.value
    assert (err.kind, err.key, err.name) == (kind, key, bad)
    assert err.suggestions[0] == first
    registry = {"architecture": MODELS, "dataset": DATASETS, "method": METHODS}[kind]
    assert err.known == sorted(registry.names())
    assert str(err).startswith(f"{key}: unknown {kind} '{bad}' (did you mean '{first}'")


def test_every_registry_refuses_a_duplicate_name() -> None:
    before = (model_names(), DATASETS.names(), method_names())
    with pytest.raises(ValueError, match="architecture 'resnet18' is registered twice"):
        register_model("resnet18", lambda **kw: None, label="not ResNet-18")
    with pytest.raises(ValueError, match="dataset 'digits' is registered twice"):
        register_dataset(dataset_info("digits"))

    class NotKD(Method):
        name = "kd"
        label = "not KD"
        Options = method_class("kd").Options

    with pytest.raises(ValueError, match="method 'kd' is registered twice"):
        register_method(NotKD)

    class Nameless(Method):  # its Options do not name it: configs could not pick it
        name = "nameless"

    with pytest.raises(TypeError, match=r"Nameless\.Options must subclass MethodOptions"):
        register_method(Nameless)
    assert (model_names(), DATASETS.names(), method_names()) == before
    assert model_info("resnet18").label == "ResNet-18" and method_class("kd").label == "KD"


def test_importing_the_packages_registers_every_name() -> None:
    """A new architecture or method module must be imported by its package's __init__:
    importing every module by hand afterwards registers nothing more."""
    script = """
import importlib, pkgutil
import gacd.data, gacd.methods, gacd.models
def names():
    return (sorted(gacd.models.MODELS.names()), sorted(gacd.methods.METHODS.names()),
            sorted(gacd.data.DATASETS.names()))
before = names()
for package in (gacd.models, gacd.methods, gacd.data):
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
assert names() == before, (before, names())
print(len(before[0]), len(before[1]), len(before[2]))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    n_models, n_methods, n_datasets = map(int, out.stdout.split())
    assert n_models >= 17 and n_methods >= 9 and n_datasets == 6


# -- dataset records against their readers ---------------------------------------------------
def _written(name: str, root: Path) -> tuple[int, int]:
    """Write tiny files in `name`'s official format under root; their (train, test) sizes."""
    if name in ("mnist", "fashion_mnist"):
        data = write_idx_mnist(root, variant=name, n_train=7, n_test=5)
    elif name == "cifar10":
        data = write_cifar10(root, n_per_batch=2, n_test=3)
    elif name == "cifar100":
        data = write_cifar100(root, n_train=6, n_test=4)
    elif name == "stl10":
        data = write_stl10(root, n_train=3, n_test=2)
    else:
        raise AssertionError(f"no format writer for {name}")
    return len(data.train_labels), len(data.test_labels)


def test_digits_record_matches_the_data_it_reads() -> None:
    info = dataset_info("digits")
    raw = read_dataset("digits")  # the real 1,797 images, shipped with scikit-learn
    assert raw.image_shape == (info.channels, info.size, info.size) == (1, 8, 8)
    assert raw.num_classes == info.classes == 10
    assert (len(raw.train), len(raw.test)) == (info.train_size, info.test_size)
    assert len(raw.train) + len(raw.test) == 1797
    assert info.is_full(len(raw.train), len(raw.test)) and not info.needs_root


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "stl10"])
def test_file_dataset_record_matches_what_its_reader_returns(name: str, tmp_path: Path) -> None:
    info = dataset_info(name)
    n_train, n_test = _written(name, tmp_path)
    raw = read_dataset(name, tmp_path)
    assert raw.name == name
    assert raw.image_shape == (info.channels, info.size, info.size)
    assert raw.num_classes == info.classes
    assert (len(raw.train), len(raw.test)) == (n_train, n_test)
    assert not info.is_full(n_train, n_test)  # a tiny copy is never the dataset itself
    assert info.needs_root
    with pytest.raises(ConfigError, match=f"data.root: dataset '{name}' needs data.root"):
        read_dataset(name)


def test_every_dataset_record_is_complete_and_consistent() -> None:
    assert DATASETS.names() == ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "stl10"]
    labels = [info.label for info in DATASETS]
    assert all(labels) and len(set(labels)) == len(labels)
    for info in DATASETS:
        assert info.train_size > 0 and info.test_size > 0 and info.classes >= 2
        assert 0 < info.defaults.step_size <= info.defaults.eps < 1
        arch = model_info(info.defaults.arch)  # the default architecture exists...
        assert arch.channels in (None, info.channels), info.name  # ...and takes these images
    with pytest.raises(FrozenInstanceError):
        dataset_info("digits").size = 9  # type: ignore[misc]


# -- architecture records against the models they build -------------------------------------
def test_every_architecture_has_a_label_of_its_own() -> None:
    labels = [info.label for info in MODELS if not info.name.startswith("test_")]
    assert all(labels) and len(set(labels)) == len(labels)
    assert all(info.label != info.name for info in MODELS if not info.name.startswith("test_"))


@pytest.mark.parametrize("name", ["digits_cnn", "digits_cnn_small", "mnist_cnn", "mnist_cnn_small"])
def test_small_cnn_runs_on_the_input_its_record_names(name: str) -> None:
    info = model_info(name)
    assert (info.channels, info.size) in ((1, 8), (1, 28))
    model = build_model(name, in_channels=info.channels, num_classes=10, mean=(0.5,), std=(0.5,))
    x = torch.rand(2, info.channels, info.size, info.size)
    feats, logits = model.eval().forward_features(x)
    assert logits.shape == (2, 10) and feats.shape == (2, model.feature_dim)


def test_record_defaults_reach_the_model_and_kwargs_override_them(tmp_path: Path) -> None:
    defaults = model_info("digits_cnn_small").defaults
    assert defaults["hidden"] == 128
    plain = build_model("digits_cnn_small", in_channels=1, num_classes=10, mean=(0.5,), std=(0.5,))
    assert plain.feature_dim == 128 and plain.spec["kwargs"] == {}
    torch.manual_seed(0)
    narrow = build_model(
        "digits_cnn_small", in_channels=1, num_classes=10, mean=(0.5,), std=(0.5,), hidden=16
    )
    assert narrow.feature_dim == 16 and narrow.spec["kwargs"] == {"hidden": 16}
    # The export keeps the caller's kwargs only; the record supplies the defaults on load.
    export_model(narrow, tmp_path / "m.pt")
    again = load_model(tmp_path / "m.pt")
    assert again.feature_dim == 16
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(again.eval()(x), narrow.eval()(x))


# -- method labels ---------------------------------------------------------------------------
def test_every_registered_method_has_a_label_of_its_own() -> None:
    labels = {cls.name: cls.label for cls in METHODS}
    assert all(labels.values()), [n for n, label in labels.items() if not label]
    assert len(set(labels.values())) == len(labels)
    assert labels["pgd_at"] == "PGD-AT" and labels["gacd"] == "GACD"


def test_report_labels_come_from_the_records() -> None:
    assert arch_label("wrn_34_10") == "WRN-34-10" and arch_label(None) == "?"
    assert dataset_label("stl10") == "STL-10" and method_label("trades") == "TRADES"
    # Names from a results.json no registry knows are printed as they are.
    assert arch_label("gone_net") == "gone_net" and method_label("gone") == "gone"
    assert dataset_label("gone") == "gone"
