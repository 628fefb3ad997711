"""MLflow tracking: the only module in derma that calls mlflow.

The default store is ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts`` (MLflow 3 removed the plain file store). ``MLFLOW_TRACKING_URI`` or
``--tracking-uri`` point it elsewhere, a remote ``mlflow server`` included.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

#: Tag names, stable across plugins, so runs can be filtered in the MLflow UI.
TAG_PLUGIN = "derma.plugin"
TAG_PLUGIN_VERSION = "derma.plugin_version"
TAG_DATASET = "derma.dataset"
TAG_DATASET_DIGEST = "derma.dataset_digest"
TAG_LABEL_SET = "derma.label_set"
TAG_DATASET_LICENCE = "derma.dataset_licence"
TAG_DATASET_CITATION = "derma.dataset_citation"
TAG_SYNTHETIC = "derma.synthetic"
TAG_VERSION = "derma.version"
TAG_GIT_SHA = "derma.git_sha"
TAG_ERROR = "derma.error"
TAG_KIND = "derma.kind"
#: Where the run's process is: pid, its start time (tells a reused pid apart), host and folder.
TAG_PID = "derma.pid"
TAG_PROCESS_START = "derma.process_start"
TAG_HOST = "derma.host"
TAG_CWD = "derma.cwd"

_MAX_PARAM_LEN = 6000

#: The experiment tag MLflow 3 reads to tell a model-training experiment from a GenAI one
#: (values in its UI: ``custom_model_development``, ``genai_development``). derma sets it on
#: every experiment it logs to. MLflow 3.17's UI lays the experiment page out by its sidebar's
#: "GenAI / Model training" switch instead (the ``workflowType`` URL query, then the browser's
#: last choice, GenAI when there is none), so the links derma prints carry :data:`UI_QUERY`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: The URL query that opens MLflow's UI in its model-training layout: the runs table, not the
#: GenAI traces overview.
UI_QUERY = "workflowType=machine_learning"
#: The address ``derma ui`` serves on by default.
UI_ADDRESS = "http://127.0.0.1:5000"

#: The metrics a person reads first, unprefixed, most important first: ``derma run`` prints them
#: with their intervals, ``derma runs`` shows the first, the MLflow runs view shows them.
HEADLINE_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "macro_auroc", "invalid_rate", "ece")
#: Curated params (``runner.CURATED_PARAMS`` names) shown in derma's MLflow runs view.
VIEW_PARAMS = ("plugin", "model", "weights", "epochs", "lr", "batch_size", "prompt", "answer_mode",
               "precision", "seed")
#: derma's saved view of the runs table in every experiment it logs to (an experiment tag, as
#: MLflow's own "Views > Save view" stores it): the curated params and the headline test metrics
#: instead of MLflow's default columns. Opened by ``?viewStateShareKey=derma`` (see :func:`ui_url`).
VIEW_ID = "derma"
VIEW_NAME = "derma: results"
_VIEW_TAG = "mlflow.sharedViewState." + VIEW_ID

#: How derma writes every CSV table (predictions, per-class, answer, trial and split tables):
#: text fields always quoted, so a comma, quote, tab, "\r" or "\n" inside an answer stays inside
#: its field, and "\n" between rows on every platform. :func:`read_table_csv` reads them back.
CSV_OPTIONS = {"index": False, "quoting": csv.QUOTE_NONNUMERIC, "lineterminator": "\n"}
#: Columns that are text whatever they hold (an answer "3" stays the string "3").
TEXT_COLUMNS = ("id", "group_id", "lesion_id", "label", "predicted", "raw_text", "image_path", "text",
                "answer", "question_id", "class", "plugin", "run_id", "state")


def table_csv(frame: pd.DataFrame) -> str:
    """``frame`` as derma's CSV text (see :data:`CSV_OPTIONS`)."""
    return frame.to_csv(**CSV_OPTIONS)


def read_table_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A table written by :func:`table_csv` (or an older unquoted one), read back to the same
    frame: blanks stay ``""``, :data:`TEXT_COLUMNS` stay text, other columns are inferred."""
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    return pd.read_csv(path, keep_default_na=False, encoding="utf-8",
                       dtype={c: str for c in header if c in TEXT_COLUMNS})


def default_store_dir() -> Path:
    return Path(os.environ.get("DERMA_MLRUNS", "mlruns")).resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{default_store_dir() / 'mlflow.db'}"


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > the local SQLite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _is_local_default(uri: str) -> bool:
    return uri == default_tracking_uri()


class StoreError(RuntimeError):
    """The MLflow store cannot be used (read-only, unreachable); the message is one line."""


_READY: set[str] = set()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def _prepare_store(uri: str) -> None:
    """Create or migrate a SQLite store once, under a file lock beside it, before any run uses
    it: two derma processes started together on a store that does not exist yet would otherwise
    race through MLflow's schema migrations. A store that cannot be written is one line, at once."""
    path = sqlite_path(uri)
    if path is None or uri in _READY:
        return
    import mlflow

    folder = path.parent
    fix = f"make {folder} writable, or point --tracking-uri / MLFLOW_TRACKING_URI at a writable store"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"MLflow store {path}: cannot create its folder ({exc.strerror or exc}); {fix}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise StoreError(f"MLflow store {path} is read-only; {fix}")
    if not os.access(folder, os.W_OK):
        # SQLite writes a journal beside the database: a read-only folder fails on the first write
        raise StoreError(f"MLflow store folder {folder} is read-only (SQLite needs to write its journal "
                         f"there); {fix}")
    try:
        import fcntl

        with open(folder / f".{path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                mlflow.MlflowClient(uri).search_experiments(max_results=1)  # creates / migrates the schema
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except StoreError:
        raise
    except OSError as exc:
        raise StoreError(f"MLflow store {path}: {exc.strerror or exc}; {fix}") from None
    except Exception as exc:  # sqlalchemy / MLflow errors: a corrupt or foreign database
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"MLflow store {path} cannot be opened ({type(exc).__name__}: {first[:200]}); "
                         "check that it is an MLflow database, or point --tracking-uri at another store") from None
    _READY.add(uri)


def create_store(uri: str) -> None:
    """Create (or migrate) the SQLite store at ``uri`` without pointing mlflow at it (test fixtures
    make one template store per session and copy it)."""
    _prepare_store(uri)


def configure(uri: str | None = None) -> str:
    """Point mlflow at the store; create the local default store folder on demand, and create or
    migrate a SQLite store once under a lock (see :func:`_prepare_store`)."""
    import logging

    import mlflow

    # MLflow's INFO chatter (database migrations) would drown derma's own one-line output
    for name in ("mlflow.store.db.utils", "alembic", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow prints two "view run at" URL lines per run against a server: derma prints its own
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = resolve_tracking_uri(uri)
    if _is_local_default(uri):
        try:
            (default_store_dir() / "artifacts").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"MLflow store folder {default_store_dir()}: cannot create it "
                             f"({exc.strerror or exc}); run derma from a writable folder or set "
                             "--tracking-uri / MLFLOW_TRACKING_URI") from None
    _prepare_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def artifact_root(uri: str) -> Path | None:
    """Where the runs of a SQLite store keep their artifacts: ``artifacts/`` beside the database
    file (``mlruns/artifacts`` for the default store), whatever the current folder; None for
    other stores (a server chooses its own)."""
    path = sqlite_path(uri)
    return None if path is None else path.expanduser().resolve().parent / "artifacts"


def runs_view() -> dict:
    """derma's saved runs view (see :data:`VIEW_ID`) in MLflow's saved-view format:
    ``{name, createdAt, updatedAt, state}``, ``state`` being the runs table's UI state as JSON
    text (the columns, in this order)."""
    import time

    columns = [f"params.`{p}`" for p in VIEW_PARAMS] + [f"metrics.`test_{m}`" for m in HEADLINE_METRICS]
    now = int(time.time() * 1000)
    state = json.dumps({"selectedColumns": columns, "columnOrder": columns}, separators=(",", ":"))
    return {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": state}


def _is_current_view(text: str | None) -> bool:
    try:
        view = json.loads(text or "")
    except ValueError:
        return False
    wanted = runs_view()
    return isinstance(view, dict) and all(view.get(k) == wanted[k] for k in ("name", "state"))


def _experiment_tags() -> dict[str, str]:
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, _VIEW_TAG: json.dumps(runs_view(), separators=(",", ":"))}


def mark_experiment(experiment, client) -> None:
    """Tag an existing experiment as derma tags the ones it creates: a model-training experiment
    (unless a kind was chosen already) with derma's runs view (rewritten when it is not derma's
    current one)."""
    tags = dict(experiment.tags or {})
    if not tags.get(EXPERIMENT_KIND_TAG):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if not _is_current_view(tags.get(_VIEW_TAG)):
        client.set_experiment_tag(experiment.experiment_id, _VIEW_TAG, _experiment_tags()[_VIEW_TAG])


def ensure_experiment(name: str, uri: str) -> str:
    """Experiment id for ``name``, created if new: marked as a model-training experiment with
    derma's runs view, and on a SQLite store with its artifacts beside the database
    (:func:`artifact_root`). An existing experiment is marked the same way."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        mark_experiment(exp, client)
        return exp.experiment_id
    root = artifact_root(uri)
    location = root.as_uri() if root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=_experiment_tags())
    except Exception:  # another worker created it meanwhile
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def has_runs_view(experiment) -> bool:
    """Whether an experiment holds derma's saved runs view (derma created or logged to it)."""
    return _VIEW_TAG in dict(experiment.tags or {})


def ui_url(uri: str, experiment_id: str, run_id: str | None = None, view: bool = False,
           base: str | None = None) -> str:
    """The MLflow UI address of an experiment's runs table (with derma's runs view when ``view``)
    or of one run, in the model-training layout: ``<server>/#/experiments/<id>/runs[/<run>]?...``.
    ``<server>`` is ``base``, else the tracking server itself for an http(s) store, else
    ``derma ui``'s default address."""
    if base is None:
        base = uri if uri.startswith(("http://", "https://")) else UI_ADDRESS
    base = base.rstrip("/")
    path = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    query = (f"viewStateShareKey={VIEW_ID}&" if view and not run_id else "") + UI_QUERY
    return f"{base}/{path}?{query}"


def ui_command(uri: str) -> str | None:
    """The command that serves the UI for ``uri`` (None for a tracking server: it has its own).
    (Not compared with ``MLFLOW_TRACKING_URI``: mlflow.set_tracking_uri sets it in this process.)"""
    if uri.startswith(("http://", "https://")):
        return None
    return "derma ui" if _is_local_default(uri) else f"derma ui --tracking-uri {uri}"


def local_path(uri: str) -> str:
    """A ``file://`` artifact URI as a path; any other URI unchanged."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    return uri


def git_sha() -> str | None:
    """The source tree's commit (with ``-dirty`` when it has uncommitted changes), if any."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def default_run_name(plugin: str, dataset: str, model: str | None = None, like: str | None = None) -> str:
    """A run name that says what ran and tells a run from its neighbours:
    ``<plugin>[-<model>]-<dataset>-<YYYYMMDD>-<HHMM>-<4 hex>`` (UTC), e.g.
    ``resnet18-synthetic-20261201-2231-ab12`` or
    ``llava_zeroshot-llava-med-v1.5-mistral-7b-ham10000-20261201-2231-ab12``. The model part
    (the last path part of a model id) is left out when it is the plugin's own name. The suffix
    comes from the OS's randomness, never from Python's seeded RNG. ``like`` (an earlier name
    from this function) keeps its time and suffix, so a run renamed once it knows its model keeps
    its identity."""
    import re
    import secrets
    from datetime import datetime, timezone

    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"

    if like and len(like.rsplit("-", 3)) == 4:
        tail = like.rsplit("-", 3)[1:]
    else:
        tail = [*datetime.now(timezone.utc).strftime("%Y%m%d-%H%M").split("-"), secrets.token_hex(2)]
    parts = [slug(plugin)]
    short = str(model).rstrip("/").rsplit("/", 1)[-1] if model else ""
    if short and slug(short) != slug(plugin):
        parts.append(slug(short))
    parts.append(slug(dataset))
    return "-".join(parts + tail)


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:_MAX_PARAM_LEN]


class Tracker:
    """Logging into one MLflow run. Plugins get one through ``ctx.tracker``."""

    def __init__(self, run_id: str, uri: str) -> None:
        self.run_id = run_id
        self.uri = uri

    @property
    def client(self):
        import mlflow

        return mlflow.MlflowClient(self.uri)

    # -- scalars -------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        """Log params; on a resumed run, params already logged with the same value are skipped."""
        import mlflow
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = []
        for key, value in params.items():
            text = _param_value(value)
            if key in existing:
                if existing[key] != text:
                    self.set_tags({f"derma.param_changed.{key}": text[:5000]})
                continue
            fresh.append(Param(key, text))
        for i in range(0, len(fresh), 90):
            self.client.log_batch(self.run_id, params=fresh[i:i + 90])
        del mlflow

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))]
        for i in range(0, len(batch), 900):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 900])

    def set_run_name(self, name: str) -> None:
        """Rename the run (what the MLflow runs list shows)."""
        self.client.update_run(self.run_id, name=name)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items() if v is not None]
        if batch:
            self.client.log_batch(self.run_id, tags=batch)

    # -- artifacts -----------------------------------------------------------------------
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Log a matplotlib figure (closed afterwards)."""
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, figure, artifact_file)
        plt.close(figure)

    def log_table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        """A table as CSV (for people and ``derma compare``) and as an MLflow table (for the UI)."""
        stem = artifact_file.rsplit(".", 1)[0]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / (Path(stem).name + ".csv")
            path.write_text(table_csv(frame), encoding="utf-8")
            parent = str(Path(stem).parent) if str(Path(stem).parent) != "." else None
            self.log_artifact(path, parent)
        self.client.log_table(self.run_id, data=frame, artifact_file=stem + ".json")

    def log_input(self, frame: pd.DataFrame, name: str, context: str, digest: str | None = None,
                  source: str | None = None) -> None:
        """Record the evaluated split (its manifest: ids, labels, lesions — not the images)."""
        import mlflow
        from mlflow.entities import DatasetInput, InputTag

        import warnings

        with warnings.catch_warnings():
            # a local folder matches two of MLflow's source types; either reading is fine here
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            ds = mlflow.data.from_pandas(frame, source=source, name=name,
                                         targets="label" if "label" in frame else None, digest=digest)
        entity = ds._to_mlflow_entity()
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags=[
            InputTag(key=mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT, value=context)])])

    def log_pytorch_model(self, model: Any, name: str = "model", input_example: Any = None,
                          **kwargs: Any) -> str:
        """Log a torch module with ``mlflow.pytorch`` and a signature; returns its model URI."""
        import mlflow

        with _active(self):
            info = mlflow.pytorch.log_model(model, name=name, input_example=input_example, **kwargs)
        return info.model_uri

    def set_terminated(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED), e.g. a dead tuning worker's run."""
        self.client.set_terminated(self.run_id, status=status)

    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri

    def download_artifacts(self, path: str, dst: str | os.PathLike) -> Path:
        return Path(self.client.download_artifacts(self.run_id, path, str(dst)))

    def artifact_paths(self, folder: str | None = None) -> set[str]:
        """The paths of the run's artifacts directly in ``folder`` (None: the top level)."""
        return {a.path for a in self.client.list_artifacts(self.run_id, folder)}

    def status(self) -> str:
        """The run's status now: RUNNING, FINISHED, FAILED or KILLED."""
        return self.client.get_run(self.run_id).info.status


class NullTracker(Tracker):
    """Logs nothing: for non-main DDP ranks and for library use without a store."""

    def __init__(self) -> None:
        super().__init__(run_id="", uri="")

    def __getattribute__(self, name: str) -> Any:
        if name in {"run_id", "uri", "__class__", "__dict__"}:
            return object.__getattribute__(self, name)
        if name.startswith("log_") or name in {"set_tags", "set_run_name"}:
            return lambda *a, **k: None
        return object.__getattribute__(self, name)


@contextlib.contextmanager
def _active(tracker: Tracker) -> Iterator[None]:
    """Make ``tracker``'s run the fluent API's active run (for flavour log_model calls)."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == tracker.run_id:
        yield
        return
    mlflow.set_tracking_uri(tracker.uri)
    with mlflow.start_run(run_id=tracker.run_id, nested=active is not None, log_system_metrics=False):
        yield


@contextlib.contextmanager
def start_run(
    experiment: str,
    run_name: str | None = None,
    tags: dict[str, Any] | None = None,
    uri: str | None = None,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[Tracker]:
    """Open (or reopen with ``resume_run_id``) a run; a failure marks it FAILED with the error
    attached (``error.txt`` and the ``derma.error`` tag), Ctrl-C marks it KILLED."""
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    uri = configure(uri)
    client = mlflow.MlflowClient(uri)
    if resume_run_id:
        run = client.get_run(resume_run_id)
        client.update_run(resume_run_id, status="RUNNING")
        run_id = run.info.run_id
        resumed = dict(process_tags())
        if TAG_ERROR in run.data.tags:  # why it stopped before; the run is no longer failed or killed
            resumed["derma.resumed_after"] = run.data.tags[TAG_ERROR]
            client.delete_tag(run_id, TAG_ERROR)
        Tracker(run_id, uri).set_tags(resumed)
    else:
        exp_id = ensure_experiment(experiment, uri)
        all_tags = {**process_tags(), **dict(tags or {})}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        if not run_name:  # never MLflow's drawn name: it repeats once derma has seeded Python's RNG
            run_name = default_run_name(str(all_tags.get(TAG_PLUGIN) or "run"), experiment)
        run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items() if v is not None})
        run_id = run.info.run_id
    tracker = Tracker(run_id, uri)
    try:
        yield tracker
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (lifetime.Terminated)
        from .lifetime import interrupt_reason

        tracker.set_tags({TAG_ERROR: interrupt_reason(exc)})
        client.set_terminated(run_id, status="KILLED")
        raise
    except BaseException as exc:
        if type(exc).__name__ == "TrialPruned":  # a tuner stopped the trial early: not a failure
            client.set_terminated(run_id, status="KILLED")
            raise
        message = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        try:
            tracker.set_tags({TAG_ERROR: message})
            tracker.log_text("".join(traceback.format_exception(exc)), "error.txt")
        finally:
            client.set_terminated(run_id, status="FAILED")
        raise
    else:
        client.set_terminated(run_id, status="FINISHED")


def process_tags() -> dict[str, str]:
    """Tags naming this process, so a run left RUNNING by a killed process can be recognised."""
    import socket

    from .lifetime import process_start

    return {TAG_PID: str(os.getpid()), TAG_PROCESS_START: process_start(os.getpid()) or "",
            TAG_HOST: socket.gethostname(), TAG_CWD: os.getcwd()}


def list_runs(uri: str | None = None, experiment: str | None = None, status: str | None = None,
              max_results: int = 1000) -> list:
    """Runs of one experiment (or of all), newest first, optionally only those with ``status``."""
    import mlflow
    from mlflow.entities import ViewType

    uri = resolve_tracking_uri(uri)
    if _is_local_default(uri) and not (default_store_dir() / "mlflow.db").exists():
        return []  # no store here yet: nothing to list (and nothing created)
    configure(uri)
    client = mlflow.MlflowClient(uri)
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise LookupError(f"no MLflow experiment named {experiment!r} in {resolve_tracking_uri(uri)}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not ids:
        return []
    flt = f"attributes.status = '{status}'" if status else ""
    return client.search_runs(ids, filter_string=flt, max_results=max_results,
                              order_by=["attributes.start_time DESC"])


def list_experiments(uri: str | None = None) -> list:
    """Active experiments that hold at least one run, by name (nothing is created)."""
    import mlflow
    from mlflow.entities import ViewType

    uri = resolve_tracking_uri(uri)
    path = sqlite_path(uri)
    if path is not None and not path.expanduser().exists():
        return []
    configure(uri)
    client = mlflow.MlflowClient(uri)
    found = [e for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
             if client.search_runs([e.experiment_id], max_results=1)]
    return sorted(found, key=lambda e: e.name)


def get_experiment(experiment_id: str, uri: str | None = None):
    import mlflow

    return mlflow.MlflowClient(resolve_tracking_uri(uri)).get_experiment(experiment_id)


def end_run(run_id: str, status: str, reason: str, uri: str | None = None) -> None:
    """End a run with ``status`` (e.g. KILLED) and the reason in the ``derma.error`` tag."""
    tracker = Tracker(run_id, resolve_tracking_uri(uri))
    tracker.set_tags({TAG_ERROR: reason})
    tracker.set_terminated(status)


# -- reading runs back (derma compare, tune, resume) ---------------------------------------
def get_run(run_id: str, uri: str | None = None):
    import mlflow

    return mlflow.MlflowClient(resolve_tracking_uri(uri)).get_run(run_id)


def search_runs(experiment: str, uri: str | None = None, filter_string: str = "") -> list:
    """Finished and failed runs of an experiment, newest first."""
    import mlflow

    client = mlflow.MlflowClient(resolve_tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment named {experiment!r} in {resolve_tracking_uri(uri)}")
    return client.search_runs([exp.experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"])


def find_runs(filter_string: str = "", uri: str | None = None, experiment: str | None = None) -> list:
    """Active runs matching an MLflow filter string (e.g. ``tags."derma.cell_id" IS NOT NULL``),
    in ``experiment`` or in every active experiment, newest first, every page of results.
    An empty list when the store or the experiment does not exist yet (nothing is created)."""
    import mlflow
    from mlflow.entities import ViewType

    uri = resolve_tracking_uri(uri)
    if _is_local_default(uri) and not (default_store_dir() / "mlflow.db").exists():
        return []
    configure(uri)
    client = mlflow.MlflowClient(uri)
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        ids = [exp.experiment_id] if exp is not None and exp.lifecycle_stage == "active" else []
    else:
        ids, token = [], None
        while True:
            page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
            ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                break
    out: list = []
    token = None
    while ids:
        page = client.search_runs(ids, filter_string=filter_string, max_results=5000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        out.extend(page)
        token = page.token
        if not token:
            break
    return out


def delete_run(run_id: str, uri: str | None = None) -> None:
    """Mark a run deleted (MLflow's soft delete: it leaves every listing, ``mlflow gc`` purges it)."""
    import mlflow

    mlflow.MlflowClient(resolve_tracking_uri(uri)).delete_run(run_id)


def set_parent_run(run_id: str, parent_run_id: str, uri: str | None = None) -> None:
    """Nest ``run_id`` under ``parent_run_id`` in the MLflow UI (its ``mlflow.parentRunId`` tag)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    Tracker(run_id, resolve_tracking_uri(uri)).set_tags({MLFLOW_PARENT_RUN_ID: parent_run_id})


def parent_run_id(run: Any) -> str | None:
    """The run a run is nested under, if any."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    return run.data.tags.get(MLFLOW_PARENT_RUN_ID)


def last_metric(run_id: str, key: str, uri: str | None = None) -> float | None:
    """The last-step value of metric ``key`` of a run (None when it was never logged)."""
    import mlflow

    history = mlflow.MlflowClient(resolve_tracking_uri(uri)).get_metric_history(run_id, key)
    return float(max(history, key=lambda m: m.step).value) if history else None


def load_run_table(run_id: str, artifact: str = "predictions.csv", uri: str | None = None) -> pd.DataFrame:
    """A CSV artifact of a run (the predictions table by default) as a DataFrame."""
    import mlflow

    client = mlflow.MlflowClient(resolve_tracking_uri(uri))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, artifact, tmp)
        except Exception as exc:
            raise LookupError(f"run {run_id} has no artifact {artifact!r}: {exc}") from None
        return read_table_csv(path)


def load_run_dict(run_id: str, artifact: str, uri: str | None = None) -> dict | None:
    """A JSON artifact of a run (``label_set.json``, ``dataset.json``) as a dict; None when the
    run has no such artifact (e.g. a run logged by an older derma)."""
    import mlflow

    client = mlflow.MlflowClient(resolve_tracking_uri(uri))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, artifact, tmp)
        except Exception:
            return None
        return json.loads(Path(path).read_text(encoding="utf-8"))


def load_run_label_set(run_id: str, uri: str | None = None):
    """The :class:`~derma_core.labels.LabelSet` a run was evaluated with (its ``label_set.json``);
    None for runs logged before label sets were recorded."""
    from .labels import LabelSet

    data = load_run_dict(run_id, "label_set.json", uri)
    return None if data is None else LabelSet.from_dict(data)


@contextlib.contextmanager
def run_artifacts(run_id: str, uri: str | None = None,
                  folders: tuple[str | None, ...] = (None,)) -> Iterator[Callable[[str], Path | None]]:
    """A run's artifacts in ``folders`` (None: the top level), downloaded on demand: inside the
    ``with``, ``fetch(path)`` is the artifact's local copy in a temporary folder, or None when the
    run has no such artifact (one listing per folder, no failed downloads)."""
    reader = Tracker(run_id, resolve_tracking_uri(uri))  # reads only
    with tempfile.TemporaryDirectory() as tmp:
        present = set().union(*(reader.artifact_paths(folder) for folder in folders))

        def fetch(path: str) -> Path | None:
            return reader.download_artifacts(path, tmp) if path in present else None

        yield fetch


def load_run_config(run_id: str, uri: str | None = None) -> dict:
    import yaml

    client_uri = resolve_tracking_uri(uri)
    import mlflow

    client = mlflow.MlflowClient(client_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "config.yaml", tmp)
        except Exception:
            raise LookupError(f"run {run_id} has no config.yaml artifact: was it started by derma run?") from None
        return yaml.safe_load(Path(path).read_text())


#: Warnings ``mlflow ui`` prints that a user cannot act on (its own use of deprecated starlette
#: modules), filtered in the server's processes only; PYTHONWARNINGS matches a message's start
#: (starlette's StarletteDeprecationWarning is a UserWarning).
_UI_WARNING_FILTERS = ("ignore:starlette.middleware.wsgi is deprecated:UserWarning",)


def ui_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``derma ui`` runs ``mlflow ui`` in: the current one, plus
    ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` unless set (the job runner serves GenAI judges
    and scorers derma does not use; it starts seven processes that outlive a killed server) and
    the warning filters of :data:`_UI_WARNING_FILTERS`."""
    env = dict(os.environ if base is None else base)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    filters = [f for f in env.get("PYTHONWARNINGS", "").split(",") if f]
    env["PYTHONWARNINGS"] = ",".join(filters + [f for f in _UI_WARNING_FILTERS if f not in filters])
    return env


def serve_ui(uri: str | None, host: str, port: int, workers: int = 1) -> int:
    """Run ``mlflow ui`` on the same store (blocks until stopped)."""
    uri = configure(uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    root = artifact_root(uri)
    if root is not None:
        cmd += ["--default-artifact-root", root.as_uri()]
    from .lifetime import popen_kwargs

    # the server gets SIGTERM when derma dies, however it dies (it forwards it to its workers)
    return subprocess.call(cmd, env=ui_environment(), **popen_kwargs())
