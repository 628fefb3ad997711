"""Reading and verifying raw dataset folders, for every dataset.

A dataset's *reader* (``descriptor.reader(raw_root, options)``) finds its metadata table(s) and
images and returns a :class:`RawData` whose ``metadata`` has the columns ``image_id``, ``dx`` (a
class code), ``group_id`` (``""`` where the dataset has no grouping), optionally ``split`` (an
official split) and ``_line`` (the row's line in the metadata file, for messages), plus the
dataset's metadata columns, all strings. Readers use the helpers here (:func:`find_table`,
:func:`read_table`, :func:`find_images`) and report what they find as :class:`Problem` lines.

:func:`verify` then checks the rows against the dataset's label set and against each other and
the image files (unknown labels, blank ids, duplicate rows, a lesion with two labels, missing,
empty, unreadable and orphan images), the same way for every dataset. Image decoding problems
(truncated, undecodable, too small or too large files, and the decoder's warnings) are found
later, while resizing, and added to the same list.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import pandas as pd

from ..labels import LabelSet

if TYPE_CHECKING:  # pragma: no cover
    from .descriptor import DatasetDescriptor

#: HAM10000's metadata columns (its table is the model for a "HAM10000-style" table, which
#: ``derma eval-answers --metadata`` also reads).
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
OPTIONAL_COLUMNS = ("dx_type", "age", "sex", "localization")
METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: The columns :func:`verify` needs; a reader's frame has them (plus metadata).
CORE_COLUMNS = ("image_id", "dx", "group_id")
#: Columns a reader may add that are not metadata: the official split and the row's file line.
SPLIT_COLUMN = "split"
LINE_COLUMN = "_line"

#: Other names people (and other mirrors) give the columns derma needs.
COLUMN_ALIASES = {
    "lesion_id": ("lesion", "lesionid", "lesion id", "patient_lesion_id"),
    "image_id": ("image", "imageid", "image id", "image_name", "isic_id", "filename", "file"),
    "dx": ("diagnosis", "label", "class", "dx_label", "target"),
    "dx_type": ("dxtype", "diagnosis_type"),
    "localization": ("location", "site", "anatom_site_general"),
}

#: Folders that image searches skip (the prepared output when ``--out`` lies inside ``--raw``).
_EXCLUDED: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("derma_raw_excluded", default=())
#: The encoding metadata tables are read in (``derma prep --encoding``; a byte-order mark is always dropped).
_TABLE_ENCODING: contextvars.ContextVar[str] = contextvars.ContextVar("derma_table_encoding", default="utf-8")


class PrepError(RuntimeError):
    """Preparation cannot go on; the message lists the fatal problems, one a line."""


@dataclass
class Problem:
    """One thing wrong with the input. ``fatal`` problems make results wrong and stop
    ``derma prep``; the others are warnings (fatal under ``--strict``)."""

    code: str
    where: str
    message: str
    fix: str
    fatal: bool = False

    def line(self) -> str:
        kind = "error" if self.fatal else "warning"
        return f"{kind}: {self.where}: {self.message}; {self.fix}"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RawData:
    """A raw folder as a reader found it (see the module docstring): ``metadata`` has the
    columns image_id, dx, group_id, optionally split and _line, and metadata columns (all
    strings); ``images`` maps image_id to its file. After :func:`verify`, ``metadata`` keeps the
    usable rows only (no ``_line``) and ``verified`` is True."""

    root: Path
    metadata_path: Path
    metadata: pd.DataFrame
    images: dict[str, Path]
    problems: list[Problem] = field(default_factory=list)
    verified: bool = False

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]


# ---------------------------------------------------------------- helpers for readers

@contextlib.contextmanager
def excluding(*folders: Path) -> Iterator[None]:
    """Within the block, :func:`find_images` skips ``folders`` (``derma prep`` excludes its own
    output folder when it lies inside the raw folder)."""
    token = _EXCLUDED.set(_EXCLUDED.get() + tuple(Path(f).resolve() for f in folders))
    try:
        yield
    finally:
        _EXCLUDED.reset(token)


@contextlib.contextmanager
def table_encoding(encoding: str) -> Iterator[None]:
    """Within the block, :func:`read_table` decodes metadata tables as ``encoding`` (every dataset's
    reader goes through it, so ``derma prep --encoding`` reaches them all)."""
    token = _TABLE_ENCODING.set(encoding)
    try:
        yield
    finally:
        _TABLE_ENCODING.reset(token)


def find_table(root: Path, names: Sequence[str] = (), what: str = "metadata table", hint: str = "") -> Path:
    """The metadata table of a raw folder: the first of ``names`` present (case-insensitive),
    else the only ``.csv``/``.tab`` file there; a one-line :class:`PrepError` otherwise."""
    if not root.is_dir():
        raise PrepError(f"error: {root}: no such folder; pass the raw folder{': ' + hint if hint else ''}")
    wanted = [n.lower() for n in names]
    files = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_file()}
    for name in wanted:
        if name in files:
            return files[name]
    csvs = sorted(p for p in files.values() if p.suffix.lower() in (".csv", ".tab"))
    if len(csvs) == 1:
        return csvs[0]
    found = ", ".join(p.name for p in csvs) or "none"
    expected = names[0] if names else "one .csv table"
    raise PrepError(f"error: {root}: no {expected} (tables found: {found}); put the {what} there"
                    + (f" or {hint}" if hint else ""))


def find_metadata(root: Path) -> Path:
    """HAM10000's metadata table in ``root`` (``.csv``, or Dataverse's ingested ``.tab``)."""
    return find_table(root, METADATA_NAMES, "HAM10000 metadata table",
                      "run `derma download ham10000 --out DIR`")


def read_table(path: Path, required: Sequence[str] = (), optional: Sequence[str] = (),
               aliases: Mapping[str, Sequence[str]] | None = None, fill_optional: bool = True,
               hint: str = "") -> tuple[pd.DataFrame, list[Problem]]:
    """A metadata table as strings (blank stays ""), stripped, with a ``_line`` column (its file
    line). Columns named in ``required``/``optional`` that are missing are looked for under
    their ``aliases`` (renamed with a warning); a missing required column is a fatal problem, a
    missing optional one is left blank (with a warning) when ``fill_optional``. Dataverse's
    ingested ``.tab`` form (tab-separated, quoted) is read too."""
    import csv

    problems: list[Problem] = []
    aliases = COLUMN_ALIASES if aliases is None else aliases
    sep = "\t" if path.suffix.lower() == ".tab" else None
    again = f"re-download it ({hint})" if hint else "re-download it"
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise PrepError(f"error: {path}: cannot be read ({exc.strerror or exc}); check the path and its "
                        "permissions") from None
    if empty:
        raise PrepError(f"error: {path}: the metadata table is empty (0 bytes); {again} or put the real table there")
    from ..textio import TextEncodingError, open_text

    try:
        # decoded whole (a byte-order mark, as Excel writes, dropped): a byte that is not in the
        # encoding is one line naming the line and byte offset, with the --encoding remedy
        text = open_text(path, _TABLE_ENCODING.get())
    except TextEncodingError as exc:
        raise PrepError(f"error: {exc}") from None
    except OSError as exc:
        raise PrepError(f"error: {path}: cannot be read ({exc.strerror or exc}); check the path and its "
                        "permissions") from None
    try:
        frame = pd.read_csv(text, sep=sep, engine="python" if sep is None else "c", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, csv.Error) as exc:
        raise PrepError(f"error: {path}: cannot be read as a CSV table ({str(exc).splitlines()[0]}); "
                        f"{again} or fix the file") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    rename: dict[str, str] = {}
    normal = {c: c.lower().replace("-", "_") for c in frame.columns}
    for wanted in tuple(required) + tuple(optional):
        if wanted in frame.columns:
            continue
        candidates = [c for c, n in normal.items()
                      if (n == wanted or n in aliases.get(wanted, ())) and c not in rename and c not in (required or ())]
        if candidates:
            rename[candidates[0]] = wanted
            problems.append(Problem("renamed_column", f"{path.name} header",
                                    f"column {candidates[0]!r} read as {wanted!r}",
                                    f"rename it to {wanted!r} to silence this warning"))
        elif wanted in required:
            problems.append(Problem("missing_column", f"{path.name} header",
                                    f"required column {wanted!r} is missing (columns: {', '.join(frame.columns)})",
                                    f"the table needs {', '.join(required)}; rename the column that holds "
                                    f"{wanted} to {wanted!r}", fatal=True))
        elif fill_optional:
            problems.append(Problem("missing_column", f"{path.name} header",
                                    f"metadata column {wanted!r} is missing", "it will be left blank"))
    frame = frame.rename(columns=rename)
    for col in frame.columns:
        frame[col] = frame[col].astype(str).str.strip()
    if fill_optional:
        for col in optional:
            if col not in frame.columns:
                frame[col] = ""
    frame[LINE_COLUMN] = [str(k) for k in range(2, len(frame) + 2)]  # the header is line 1
    return frame, problems


def read_metadata(path: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """A HAM10000-style metadata table (lesion_id, image_id, dx and the optional columns), as
    strings, columns renamed to derma's names."""
    frame, problems = read_table(path, REQUIRED_COLUMNS, OPTIONAL_COLUMNS, fill_optional=False)
    return frame.drop(columns=[LINE_COLUMN]), problems


def find_images(root: Path, exclude: Path | None = None) -> tuple[dict[str, Path], list[Problem]]:
    """Every image under ``root`` by id (file stem). The same id twice with the same size (e.g.
    Kaggle's upper- and lower-case folder copies) is one image; with different sizes it is a
    problem. Folders given to :func:`excluding` (and ``exclude``) are skipped."""
    problems: list[Problem] = []
    images: dict[str, Path] = {}
    skip = set(_EXCLUDED.get()) | ({exclude.resolve()} if exclude is not None else set())
    identical = 0
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (not skip or (here / d).resolve() not in skip))
        for name in sorted(filenames):
            path = here / name
            if path.suffix.lower() not in IMAGE_SUFFIXES or name.startswith("."):
                continue
            image_id = path.stem
            if image_id in images:
                first = images[image_id]
                size = _file_size(path)
                if size is not None and size == _file_size(first):
                    identical += 1
                    continue
                problems.append(Problem("duplicate_image", str(path.relative_to(root)),
                                        f"image id {image_id} also at {first.relative_to(root)} with different content",
                                        "remove one copy; the first is used"))
                continue
            images[image_id] = path
    if identical:
        problems.append(Problem("duplicate_copies", str(root),
                                f"{identical} images appear in two folders with the same size (e.g. Kaggle's "
                                "upper- and lower-case copies)", "the first copy of each is used"))
    return images, problems


def _file_size(path: Path) -> int | None:
    """A file's size, or None where it cannot be read (e.g. a symbolic link whose target is gone)."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def unreadable_reason(path: Path) -> str | None:
    """Why an image file cannot be read (a dangling symbolic link, no such file, no permission),
    or None where it can."""
    try:
        path.stat()
    except OSError as exc:
        if path.is_symlink():
            with contextlib.suppress(OSError):
                return f"a symbolic link to {os.readlink(path)}, which does not exist"
        return exc.strerror or str(exc)
    if not os.access(path, os.R_OK):
        return "no permission to read it"
    return None


# ---------------------------------------------------------------- generic verification

def codes_hint(label_set: LabelSet, limit: int = 12) -> str:
    """The class codes for a message: all of them, or the first ``limit`` and how many more."""
    codes = list(label_set.codes)
    if len(codes) <= limit:
        return ", ".join(codes)
    return f"{', '.join(codes[:limit])}, ... ({len(codes)} classes; `derma datasets` lists them)"


def verify(raw: RawData, descriptor: "DatasetDescriptor", label_set: LabelSet | None = None,
           official_split: bool = False) -> RawData:
    """Check a reader's rows against ``label_set`` (the descriptor's by default), each other and
    the image files; returns a new :class:`RawData` holding the usable rows and every problem.

    * a label outside the set: fatal, naming the file and line (a label that differs from a
      code only in case is read as that code);
    * a blank image id: fatal; a blank group id: the image is its own group (a warning where
      the dataset has a grouping);
    * duplicate rows: identical ones are one row (a warning), conflicting ones fatal;
    * a lesion with two labels: fatal (a patient may have lesions of several classes);
    * a row without an image file, with an empty one, or with one that cannot be read (a dangling
      symbolic link, no permission): skipped (a warning); an image without a row: ignored (a
      warning);
    * with ``official_split``: every row needs a split of train, val or test (fatal otherwise).
    """
    label_set = label_set or descriptor.label_set()
    problems = list(raw.problems)
    root = raw.root
    frame = raw.metadata.copy()
    if not raw.images and not any(p.code == "no_images" for p in problems):
        where = f"; expected: {descriptor.layout}" if descriptor.layout else ""
        problems.append(Problem("no_images", str(root), "no .jpg or .png images found",
                                f"put the dataset's images under the raw folder{where}", fatal=True))
    missing = [c for c in CORE_COLUMNS if c not in frame.columns]
    if missing:
        if not any(p.fatal for p in problems):  # a reader that should have reported it
            raise PrepError(f"error: dataset {descriptor.name}: its reader returned no {', '.join(missing)} "
                            f"column(s) for {raw.metadata_path}; this is a bug in the reader")
        return RawData(root, raw.metadata_path, pd.DataFrame(columns=list(CORE_COLUMNS), dtype=str), raw.images,
                       problems, verified=True)
    for col in frame.columns:
        frame[col] = frame[col].astype(str).str.strip()
    if LINE_COLUMN in frame.columns:
        line = frame[LINE_COLUMN]
    else:
        line = pd.Series([str(k) for k in range(2, len(frame) + 2)], index=frame.index)
    rows = _RowCheck(frame, line, pd.Series(True, index=frame.index), problems, raw.metadata_path.name)
    _check_labels(rows, label_set)
    _check_ids_and_groups(rows, descriptor.grouping, descriptor.group_column or "group_id")
    if official_split:
        _check_official_split(rows, descriptor, raw.metadata_path)
    _check_duplicates(rows, descriptor.grouping)
    if descriptor.grouping == "lesion":  # a lesion has one diagnosis; a patient may have lesions of several
        _check_lesion_labels(rows, descriptor.grouping)
    _check_image_files(rows, raw)
    usable = rows.frame[rows.keep].drop(columns=[LINE_COLUMN], errors="ignore")
    if not official_split:
        usable = usable.drop(columns=[SPLIT_COLUMN], errors="ignore")
    return RawData(root, raw.metadata_path, usable.reset_index(drop=True), raw.images, problems, verified=True)


@dataclass
class _RowCheck:
    """The rows :func:`verify` checks: the (stripped) frame, each row's line in the metadata
    file, which rows are kept so far, the problems found and the metadata file's name."""

    frame: pd.DataFrame
    line: pd.Series
    keep: pd.Series
    problems: list[Problem]
    name: str

    def where(self, idx) -> str:
        image_id = self.frame.at[idx, "image_id"]
        return f"{self.name} line {self.line[idx]}" + (f" ({image_id})" if image_id else "")


def _check_labels(rows: _RowCheck, label_set: LabelSet) -> None:
    """Labels: a code, or a code in another case (read as that code); any other is fatal."""
    frame = rows.frame
    by_lower: dict[str, str] = {}
    for code in label_set.codes:
        by_lower.setdefault(code.lower(), code)
    known = frame["dx"].isin(label_set.codes)
    frame.loc[~known, "dx"] = frame.loc[~known, "dx"].map(lambda v: by_lower.get(v.lower(), v))
    for idx in frame.index[~frame["dx"].isin(label_set.codes)]:
        value = frame.at[idx, "dx"]
        rows.problems.append(Problem("unknown_label", rows.where(idx),
                                     f"unknown label {value!r}" if value else "empty label",
                                     f"use one of {codes_hint(label_set)} or remove the row", fatal=True))
        rows.keep[idx] = False


def _check_ids_and_groups(rows: _RowCheck, grouping: str | None, group_column: str) -> None:
    """A blank image id is fatal; a blank group id makes the image its own group (a warning
    where the dataset has a grouping); without a grouping every image is its own group."""
    frame = rows.frame
    for idx in frame.index[frame["image_id"] == ""]:
        rows.problems.append(Problem("blank_field", f"{rows.name} line {rows.line[idx]}", "empty image_id",
                                     "fill in image_id or remove the row", fatal=True))
        rows.keep[idx] = False

    blank_group = frame["group_id"] == ""
    if grouping is None:
        frame["group_id"] = frame["image_id"]  # every image is its own group
    elif blank_group.any():
        for idx in frame.index[blank_group & (frame["image_id"] != "")]:
            rows.problems.append(Problem("blank_field", rows.where(idx), f"empty {group_column}",
                                         f"the image is treated as its own {grouping}; fill in {group_column} so "
                                         f"images of one {grouping} stay in one split"))
        frame["group_id"] = frame["group_id"].where(~blank_group, f"{grouping}_of_" + frame["image_id"])


def _check_official_split(rows: _RowCheck, descriptor: "DatasetDescriptor", metadata_path: Path) -> None:
    """Every row needs an official split of train, val or test (fatal otherwise)."""
    frame = rows.frame
    if SPLIT_COLUMN not in frame.columns:
        raise PrepError(f"error: dataset {descriptor.name}: its reader gave no official split (a 'split' "
                        f"column) for {metadata_path}; use --split grouped")
    from .splits import SPLITS

    bad_split = ~frame[SPLIT_COLUMN].isin(SPLITS)
    for idx in frame.index[bad_split & rows.keep]:
        value = frame.at[idx, SPLIT_COLUMN]
        rows.problems.append(Problem("bad_split", rows.where(idx),
                                     f"official split {value!r} is not one of {', '.join(SPLITS)}",
                                     "fix the split of this row, or prepare with --split grouped", fatal=True))
        rows.keep[idx] = False


def _check_duplicates(rows: _RowCheck, grouping: str | None) -> None:
    """Identical rows of one image are one row (a warning); conflicting ones are fatal."""
    frame, line, keep = rows.frame, rows.line, rows.keep
    compare = frame.drop(columns=[LINE_COLUMN], errors="ignore")
    dup = frame["image_id"].duplicated(keep=False) & (frame["image_id"] != "")
    for image_id, group in compare[dup].groupby("image_id", sort=False):
        lines = ", ".join(str(line[i]) for i in group.index)
        same = len(group.drop_duplicates()) == 1
        what = f"{grouping}/label" if grouping else "label"
        rows.problems.append(Problem("duplicate_row", f"{rows.name} lines {lines}",
                                     f"image id {image_id} appears {len(group)} times"
                                     + ("" if same else " with different values"),
                                     "keep one row" + (" (identical rows: the first is used)" if same else
                                                       f" and decide which {what} is right"), fatal=not same))
        keep[group.index[1:]] = False
        if not same:
            keep[group.index[0]] = False


def _check_lesion_labels(rows: _RowCheck, grouping: str) -> None:
    """A lesion with two labels is fatal."""
    frame, keep, line = rows.frame, rows.keep, rows.line
    labels_per_group = frame[keep].groupby("group_id")["dx"].nunique()
    for group_id in labels_per_group.index[labels_per_group > 1]:
        group_rows = frame[keep & (frame["group_id"] == group_id)]
        detail = ", ".join(f"line {line[i]} {group_rows.at[i, 'dx']}" for i in group_rows.index[:6])
        rows.problems.append(Problem("group_two_labels", f"{rows.name} {grouping} {group_id}",
                                     f"one {grouping} carries {group_rows['dx'].nunique()} labels ({detail})",
                                     f"correct the labels of its rows: all images of a {grouping} share one "
                                     "diagnosis", fatal=True))


def _check_image_files(rows: _RowCheck, raw: RawData) -> None:
    """A row without an image file, or with an unreadable or empty one, is skipped (a warning);
    an image without a row is ignored (a warning)."""
    frame, problems = rows.frame, rows.problems
    for idx in frame.index[rows.keep]:
        image_id = frame.at[idx, "image_id"]
        path = raw.images.get(image_id)
        if path is None:
            problems.append(Problem("missing_image", rows.where(idx), f"no image file {image_id}.jpg under {raw.root}",
                                    "add the image or remove the row; the row is skipped"))
            rows.keep[idx] = False
        elif (why := unreadable_reason(path)) is not None:
            problems.append(Problem("unreadable_image", str(path), f"cannot be read ({why})",
                                    "restore the file (or the link's target) or fix its permissions; the row is "
                                    "skipped"))
            rows.keep[idx] = False
        elif path.stat().st_size == 0:
            problems.append(Problem("empty_image", str(path), "the image file is empty (0 bytes)",
                                    "re-download or replace it; the row is skipped"))
            rows.keep[idx] = False

    listed = set(frame["image_id"])
    for image_id, path in raw.images.items():
        if image_id not in listed:
            problems.append(Problem("orphan_image", str(path), f"image {image_id} has no metadata row",
                                    "add a row for it or remove the file; it is ignored"))


def metadata_columns(frame: pd.DataFrame) -> list[str]:
    """The metadata columns of a reader's frame (everything but the core, split and line columns)."""
    return [c for c in frame.columns if c not in CORE_COLUMNS + (SPLIT_COLUMN, LINE_COLUMN)]


__all__ = ["PrepError", "Problem", "RawData", "excluding", "find_table", "find_metadata", "read_table",
           "read_metadata", "find_images", "verify", "metadata_columns", "codes_hint", "REQUIRED_COLUMNS",
           "OPTIONAL_COLUMNS", "CORE_COLUMNS"]
