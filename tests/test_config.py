import pytest
import yaml
from click.testing import CliRunner

from derma_core.cli import cli
from derma_core.config import ConfigError, parse_override, resolve_config


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    (tmp_path / "default.yaml").write_text(yaml.safe_dump({
        "plugin": None, "seed": 42, "quiet": False,
        "data": {"source": "synthetic", "dir": None, "size": 64},
        "train": {"lr": 0.001, "epochs": 3, "betas": [0.9, 0.99]},
        "_choices": {"data.source": ["synthetic", "ham10000"]},
        "_types": {"data.dir": "str", "plugin": "str"},
    }))
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump({"train": {"epochs": 20}, "model": {"dropout": 0.2}}))
    monkeypatch.setenv("DERMA_CONFIG_DIR", str(tmp_path))
    return tmp_path


def test_layers_merge_in_order(config_dir, tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  epochs: 5\nmodel:\n  dropout: 0.0\n")
    config = resolve_config("demo", user, ["train.epochs=7"], {"seed": 1})
    assert config["train"]["epochs"] == 7          # -o beats --config beats plugin file
    assert config["model"]["dropout"] == 0.0       # --config beats plugin file
    assert config["train"]["lr"] == 0.001          # default kept
    assert config["seed"] == 1 and config["plugin"] == "demo"


def test_plugin_file_layer(config_dir):
    assert resolve_config("demo")["train"]["epochs"] == 20
    assert resolve_config("other")["train"]["epochs"] == 3  # no configs/other.yaml: defaults only


@pytest.mark.parametrize("text,expected", [
    ("a.b=3", 3), ("a.b=1e-3", 0.001), ("a.b=0.5", 0.5), ("a.b=true", True), ("a.b=null", None),
    ("a.b=[1, 2]", [1, 2]), ("a.b=hello", "hello"), ("a.b=", ""),
])
def test_override_values_are_typed(text, expected):
    assert parse_override(text) == ("a.b", expected)


@pytest.mark.parametrize("override,message", [
    ("train.lrr=1", "unknown key 'train.lrr'; section 'train' allows: betas, epochs, lr"),
    ("nope=1", "unknown key 'nope'; the top level allows:"),
    ("train.epochs=abc", "train.epochs must be int, got 'abc'"),
    ("train.epochs=2.5", "train.epochs must be int"),
    ("train.lr=true", "train.lr must be float"),
    ("train.betas=3", "train.betas must be list"),
    ("data.source=imagenet", "data.source must be one of synthetic, ham10000, got 'imagenet'"),
    ("data.dir=3", "data.dir must be str"),
    ("quiet=1", "quiet must be bool"),
    ("train=3", "train must be a mapping"),
    ("novalue", "must look like dotted.key=value"),
])
def test_invalid_overrides_are_refused_naming_the_key(config_dir, override, message):
    with pytest.raises(ConfigError) as err:
        resolve_config("demo", None, [override])
    assert message in str(err.value)


def test_int_accepted_for_float_and_null_default_takes_declared_type(config_dir):
    config = resolve_config("demo", None, ["train.lr=1", "data.dir=/data/prepared"])
    assert config["train"]["lr"] == 1 and config["data"]["dir"] == "/data/prepared"


def test_config_file_errors_name_the_file(config_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        resolve_config("demo", bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  dropout: 0.1\n  depth: 50\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: unknown key 'model.depth'"):
        resolve_config("demo", unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("demo", tmp_path / "missing.yaml")


def test_print_config_shows_resolved_config_and_cli_refuses_bad_keys():
    runner = CliRunner()
    result = runner.invoke(cli, ["run", "--plugin", "prior", "--print-config", "-o", "evaluation.bootstrap=5", "--seed", "7"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(result.output)
    assert config["evaluation"]["bootstrap"] == 5 and config["seed"] == 7 and config["plugin"] == "prior"
    result = runner.invoke(cli, ["run", "--plugin", "prior", "-o", "evaluation.bootstrapp=5"])
    assert result.exit_code == 2
    assert "unknown key 'evaluation.bootstrapp'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_override_does_not_change_the_schema(config_dir):
    """-o train.lr=1 (an int for a float key) must not make a later float override invalid."""
    config = resolve_config("demo", None, ["train.lr=1", "train.lr=0.5"])
    assert config["train"]["lr"] == 0.5


@pytest.mark.parametrize("text, line, key", [
    ("train:\n  epochs: 3\nmodel:\n  dropout: 0.1\ntrain:\n  lr: 0.1\n", 5, "train"),  # a section twice
    ("train:\n  epochs: 3\n  epochs: 4\n", 3, "epochs"),  # a nested key twice
    ("seed: 1\nseed: 2\n", 2, "seed"),
])
def test_duplicate_yaml_keys_are_refused_with_file_line_and_key(tmp_path, text, line, key):
    from derma_core.config import ConfigError, load_yaml

    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    message = str(info.value)
    assert str(path) in message and f"line {line}" in message and repr(key) in message
    assert "\n" not in message


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    from derma_core.config import load_yaml

    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {epochs: 2}\ntrain:\n  <<: *b\n  lr: 0.1\n")
    assert load_yaml(path)["train"] == {"epochs": 2, "lr": 0.1}
