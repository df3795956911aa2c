"""Typed config loading: YAML, dotted overrides, and errors that name the key and the nearest valid one."""

import pytest

from vireid.config import config_diff, load_config, parse_overrides, to_dict
from vireid.errors import ConfigError


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["train.epochs=3", "model.nl_inter_channels=half", "data.root=/x", "optim.lr=0.5"])
    assert cfg.train.epochs == 3
    assert cfg.model.nl_inter_channels == "half"
    assert cfg.data.root == "/x"
    assert cfg.optim.lr == 0.5


def test_yaml_base_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("method: baseline\ntrain:\n  epochs: 5\n  seed: 7\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain:\n  epochs: 9\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.epochs, cfg.train.seed) == (9, 7)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epoch=3", "Did you mean 'train.epochs'"),
        ("loss.metrc=wrt", "Did you mean 'loss.metric'"),
        ("loss.metric=foo", "loss.metric"),
        ("train.epochs=abc", "train.epochs"),
        ("data=3", "'data' is a section"),
        ("noequals", "has no '='"),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: baseline\nsampler:\n  PP: 4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*sampler\.PP.*sampler\.P"):
        load_config(path)


def test_unknown_method_lists_choices():
    with pytest.raises(ConfigError, match="available: baseline"):
        load_config(None, ["method=nosuch"])


def test_parse_overrides_yaml_values():
    assert parse_overrides(["a.b=[1, 2]", "c=true", "d=null"]) == {"a": {"b": [1, 2]}, "c": True, "d": None}


def test_config_diff_lists_changed_keys():
    a = to_dict(load_config(None, []))
    b = to_dict(load_config(None, ["train.epochs=2"]))
    assert config_diff(a, b) == ["train.epochs: 81 -> 2"]
