"""`derma datasets` lists every registered dataset with its facts; `derma download` dispatches to
a dataset's downloader, or prints where to get it (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from derma_core import hookimpl, plugins
from derma_core.cli import cli
from derma_core.data.datasets import builtin_descriptors
from derma_core.data.datasets.ham10000 import LABEL_SET
from derma_core.data.descriptor import DatasetDescriptor
from derma_core.labels import LabelSet

CALLS: list = []


def fetch(out: Path, options, progress):
    CALLS.append((out, dict(options), progress))
    out.mkdir(parents=True, exist_ok=True)
    (out / "fetched.txt").write_text("ok")


PAIR = DatasetDescriptor(name="pair", title="Pair (test)", labels=LabelSet(codes=("x", "y")), grouping="patient",
                         modality="clinical", licence="CC0", downloader=fetch)
#: A dataset derma cannot fetch: its access line says where to get it.
HANDMADE = DatasetDescriptor(name="handmade", title="Handmade (test)", labels=LabelSet(codes=("x", "y")),
                             access="ask the clinic for handmade.zip", layout="handmade.csv and images/*.jpg")


class Plugin:
    @hookimpl
    def register_datasets(self, register):
        register("pair", PAIR)
        register("handmade", HANDMADE)


@pytest.fixture
def pair():
    plugin = Plugin()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="test-pair")
    CALLS.clear()
    yield
    plugins.pm.unregister(plugin)


def test_datasets_json_lists_every_registered_dataset(pair, tiny_source):
    result = CliRunner().invoke(cli, ["datasets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    ham = rows["ham10000"]
    assert ham["codes"] == list(LABEL_SET.codes) and ham["classes"] == 7 and ham["grouping"] == "lesion"
    assert ham["modality"] == "dermoscopic" and ham["split_policy"] == "grouped" and ham["downloadable"] is True
    assert ham["licence"].startswith("CC BY-NC 4.0") and ham["synthetic"] is True
    for descriptor in builtin_descriptors():  # the public datasets too, with their label sets
        assert rows[descriptor.name]["classes"] == len(descriptor.label_set())
    assert rows["dermamnist"]["downloadable"] is True and rows["handmade"]["downloadable"] is False
    assert rows["handmade"]["note"] == "ask the clinic for handmade.zip"
    assert {"name": "size", "default": "28", "choices": ["28", "64", "128", "224"]}.items() <= \
        rows["dermamnist"]["options"][0].items()
    assert rows["dermamnist"]["codes"] == list(LABEL_SET.codes) and rows["dermamnist"]["grouping"] is None
    assert rows["synthetic"]["codes"] == list(LABEL_SET.codes)
    assert rows["folder"]["codes"] is None and "spec" in rows["folder"]["note"]
    assert rows["pair"] == {**rows["pair"], "classes": 2, "codes": ["x", "y"], "grouping": "patient",
                            "modality": "clinical", "downloadable": True, "plugin": "test-pair"}
    assert rows["tiny"]["classes"] is None and "without a descriptor" in rows["tiny"]["note"]


def test_datasets_table(pair):
    result = CliRunner().invoke(cli, ["datasets"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "classes", "grouping", "modality", "split", "download", "licence"]
    ham = next(l for l in lines if l.startswith("ham10000 "))
    assert "7: akiec bcc bkl df mel nv vasc" in ham and " lesion " in ham and " yes " in ham and "CC BY-NC" in ham
    pair_line = next(l for l in lines if l.startswith("pair "))
    assert pair_line.split()[1:] == ["2:", "x", "y", "patient", "clinical", "grouped", "yes", "CC0"]
    assert "from its spec" in next(l for l in lines if l.startswith("folder "))


def test_download_dispatches_to_the_descriptor(pair, tmp_path):
    result = CliRunner().invoke(cli, ["download", "pair", "--out", str(tmp_path / "raw"), "-q"])
    assert result.exit_code == 0, result.output
    assert CALLS == [(tmp_path / "raw", {}, False)] and (tmp_path / "raw" / "fetched.txt").exists()
    bad = CliRunner().invoke(cli, ["download", "pair", "--out", str(tmp_path / "raw"), "--server", "http://x"])
    assert bad.exit_code == 1 and "--server does not apply to dataset pair" in bad.output and len(CALLS) == 1


def test_download_without_a_downloader_says_where_to_get_it(pair, tmp_path):
    result = CliRunner().invoke(cli, ["download", "handmade", "--out", str(tmp_path / "raw")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == ["handmade: derma cannot download it: ask the clinic for handmade.zip; "
                     "`derma prep --dataset handmade` expects: handmade.csv and images/*.jpg"]
    assert not (tmp_path / "raw").exists()
    unknown = CliRunner().invoke(cli, ["download", "nope", "--out", str(tmp_path / "raw")])
    assert unknown.exit_code == 1 and "unknown dataset 'nope'; known:" in unknown.output
    bad = CliRunner().invoke(cli, ["download", "dermamnist", "--out", str(tmp_path / "raw"), "--option", "size=7"])
    assert bad.exit_code == 1 and "option size='7': use one of 28, 64, 128, 224" in bad.output
