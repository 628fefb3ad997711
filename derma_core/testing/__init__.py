"""Helpers for testing plugins: a tiny in-memory dataset and a one-call fit/predict.

Used by derma's own tests and by the test that ``derma plugins new`` generates.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.descriptor import DatasetDescriptor
from ..interfaces import Dataset, Predictions, RunContext, Split
from ..labels import LabelSet
from ..tracking import NullTracker


def tiny_descriptor(label_set: LabelSet | None = None, name: str = "tiny") -> DatasetDescriptor:
    """The descriptor of a test dataset: HAM10000's facts (label set, subgroups) by default,
    or the given label set with lesion grouping and no subgroups."""
    from dataclasses import replace

    from ..data.datasets.ham10000 import DESCRIPTOR as HAM

    if label_set is None:
        return replace(HAM, name=name, title=name)
    return DatasetDescriptor(name=name, title=name, labels=label_set)


def make_tiny_dataset(n_train: int = 70, n_val: int = 28, n_test: int = 35, size: int = 8,
                      name: str = "tiny", seed: int = 0, learnable: bool = False,
                      label_set: LabelSet | None = None) -> Dataset:
    """A small in-memory dataset with every class in every split and lesions of one or two images.

    Its classes are HAM10000's unless ``label_set`` is given (the commonest class is the last
    one of HAM10000's order, ``nv``, or the first of another set). With ``learnable`` each class
    gets its own mean colour, so a sensible classifier beats chance.
    """
    descriptor = tiny_descriptor(label_set, name)
    codes = descriptor.labels.codes  # type: ignore[union-attr]
    common = "nv" if "nv" in codes else codes[0]
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = [codes[i % len(codes)] if i % 3 else common for i in range(n)]
        lesions, current = [], None
        for i, label in enumerate(labels):
            if i % 2 == 0 or label != labels[i - 1]:
                current = f"L_{split}_{i:04d}"
            lesions.append(current)
        frame = pd.DataFrame({"id": [f"{split}_{i:04d}" for i in range(n)], "label": labels,
                              "group_id": lesions, "image_path": [f"{split}_{i:04d}.jpg" for i in range(n)]})
        cache = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        if learnable:
            for i, label in enumerate(labels):
                k = codes.index(label)
                colour = np.array([(37 * k) % 256, (91 * k + 40) % 256, (53 * k + 90) % 256])
                noise = rng.normal(0, 20, size=(size, size, 3))
                cache[i] = np.clip(colour + noise, 0, 255).astype(np.uint8)
        splits[split] = Split(split, frame, Path("."), cache, label_set=descriptor.labels)
    return Dataset(name, f"digest-{name}-{seed}", splits, descriptor=descriptor, synthetic=True)


def make_context(config: dict | None = None, work_dir: str | Path | None = None, seed: int = 0,
                 dataset: Dataset | DatasetDescriptor | None = None) -> RunContext:
    """A RunContext that logs nothing (NullTracker), quiet, on the CPU; its dataset facts are
    ``dataset``'s (HAM10000's by default)."""
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="derma-test-"))
    facts = dataset.descriptor if isinstance(dataset, Dataset) else (dataset or tiny_descriptor())
    return RunContext(config=config or {}, tracker=NullTracker(), device="cpu", seed=seed, work_dir=work, quiet=True,
                      dataset=facts)


def fit_predict(classifier, dataset: Dataset, split: str = "test", ctx: RunContext | None = None) -> Predictions:
    """``classifier.fit(train, val)`` then ``predict`` on ``split``; returns the predictions."""
    ctx = ctx or make_context(dataset=dataset)
    classifier.fit(dataset["train"], dataset["val"], ctx)
    return classifier.predict(dataset[split], ctx)


# -- headless Chromium (the report and `derma ui` tests) ---------------------------------------------
def chromium_path() -> str | None:
    """The Chromium executable (``chromium`` / ``chromium-browser`` on PATH, or Debian's
    ``/usr/bin/chromium``), or None: tests that need it skip with a reason."""
    import shutil

    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def chromium(url: str, *, window: tuple[int, int] = (1400, 900), screenshot: str | Path | None = None,
             virtual_time_budget_ms: int | None = None, timeout: float = 180) -> str:
    """Load ``url`` in headless Chromium with a ``window`` (width, height) viewport and return
    the DOM after its scripts ran (``--dump-dom``), or write a ``screenshot`` PNG of it (then ""
    is returned). A throwaway profile, no network services; raises AssertionError with
    Chromium's stderr when it fails, FileNotFoundError when it is not installed."""
    import shutil
    import subprocess

    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("chromium not installed")
    profile = tempfile.mkdtemp(prefix="derma-chromium-")
    what = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    budget = [f"--virtual-time-budget={int(virtual_time_budget_ms)}"] if virtual_time_budget_ms else []
    try:
        proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                               "--disable-component-update", "--disable-sync", "--no-first-run",
                               f"--user-data-dir={profile}",
                               f"--window-size={int(window[0])},{int(window[1])}", *budget, *what, url],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def sigint_default() -> None:
    """``preexec_fn`` for a subprocess a test will interrupt with SIGINT. A shell's background job
    (``pytest ... &``) starts with SIGINT ignored and its children inherit that, so Python in the
    child would never raise KeyboardInterrupt; the test must not depend on how pytest was started."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def invoke_cli(*args) -> tuple[int, str]:
    """``derma ARGS`` in-process: (exit code, output). An exception that is not a clean exit comes
    back as code 99 with its traceback in the output, so a test's message shows what broke."""
    import traceback

    from click.testing import CliRunner

    from ..cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 99, result.output + "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.output


def one_line(output: str, *fragments: str) -> str:
    """The first line of ``output`` holding every fragment (asserting there is one, and no traceback)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if all(f in line for f in fragments)]
    assert lines, f"no one line holds all of {fragments}:\n{output}"
    return lines[0]


def as_prepared_by_an_earlier_derma(folder: str | Path) -> None:
    """Rewrite a prepared folder's records as derma wrote them before the cache's integrity record
    and the decoder version existed (no ``cache.integrity``, no ``decoder``, no image sizes, another
    fingerprint), to test that such folders are still read and upgraded."""
    import json

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["cache"]["integrity"]
    manifest["fingerprint"] = "prepared-by-an-earlier-derma"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    state = json.loads((folder / "state.json").read_text())
    state.pop("decoder")
    for entry in state["images"].values():
        entry.pop("wh", None)
    (folder / "state.json").write_text(json.dumps(state))
