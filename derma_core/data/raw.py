"""Reading and verifying a raw HAM10000-style folder.

:func:`scan_raw` finds the metadata table and the images (HAM10000's two part folders, Kaggle's
lower-case copies, or one folder of ``.jpg``/``.png``), checks the table, and returns a
:class:`RawData` with every problem found, each a one-line :class:`Problem` naming the file or
row and what to do. Image decoding problems (empty, truncated, undecodable files) are found
later, while resizing, and added to the same list.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ..labels import LABELS

REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
OPTIONAL_COLUMNS = ("dx_type", "age", "sex", "localization")
METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: Other names people (and other mirrors) give the columns derma needs.
COLUMN_ALIASES = {
    "lesion_id": ("lesion", "lesionid", "lesion id", "patient_lesion_id"),
    "image_id": ("image", "imageid", "image id", "image_name", "isic_id", "filename", "file"),
    "dx": ("diagnosis", "label", "class", "dx_label", "target"),
    "dx_type": ("dxtype", "diagnosis_type"),
    "localization": ("location", "site", "anatom_site_general"),
}


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
    """A checked raw folder: ``metadata`` keeps the usable rows (columns lesion_id, image_id,
    dx plus the optional ones, all strings) and ``images`` maps image_id to its file."""

    root: Path
    metadata_path: Path
    metadata: pd.DataFrame
    images: dict[str, Path]
    problems: list[Problem] = field(default_factory=list)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]


def find_metadata(root: Path) -> Path:
    """The metadata table of a raw folder (case-insensitive name; ``.csv`` or Dataverse's ``.tab``)."""
    wanted = {n.lower() for n in METADATA_NAMES}
    for path in sorted(root.iterdir()):
        if path.is_file() and path.name.lower() in wanted:
            return path
    csvs = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".tab"))
    if len(csvs) == 1:
        return csvs[0]
    found = ", ".join(p.name for p in csvs) or "none"
    raise PrepError(f"error: {root}: no HAM10000_metadata.csv (tables found: {found}); "
                    "put the metadata table there or run `derma download ham10000 --out DIR`")


def read_metadata(path: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """The metadata as strings (blank stays ""), columns renamed to derma's names.
    Dataverse's ingested ``.tab`` form (tab-separated, quoted) is accepted too."""
    import csv

    problems: list[Problem] = []
    sep = "\t" if path.suffix.lower() == ".tab" else None
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise PrepError(f"error: {path}: cannot be read ({exc.strerror or exc}); check the path and its "
                        "permissions") from None
    if empty:
        raise PrepError(f"error: {path}: the metadata table is empty (0 bytes); re-download it "
                        "(`derma download ham10000 --out DIR`) or put the real table there")
    try:
        # utf-8-sig: a table saved by Excel starts with a byte-order mark that would otherwise
        # stick to the first column's name ("\ufefflesion_id")
        frame = pd.read_csv(path, sep=sep, engine="python" if sep is None else "c", dtype=str,
                            keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, csv.Error) as exc:
        raise PrepError(f"error: {path}: cannot be read as a CSV table ({str(exc).splitlines()[0]}); "
                        "re-download it or fix the file") from None
    rename: dict[str, str] = {}
    normal = {c: c.strip().lower().replace("-", "_") for c in frame.columns}
    for wanted in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        if wanted in frame.columns:
            continue
        candidates = [c for c, n in normal.items() if n == wanted or n in COLUMN_ALIASES.get(wanted, ())]
        candidates = [c for c in candidates if c not in rename]
        if candidates:
            rename[candidates[0]] = wanted
            problems.append(Problem("renamed_column", f"{path.name} header",
                                    f"column {candidates[0]!r} read as {wanted!r}",
                                    f"rename it to {wanted!r} to silence this warning"))
        elif wanted in REQUIRED_COLUMNS:
            problems.append(Problem("missing_column", f"{path.name} header",
                                    f"required column {wanted!r} is missing (columns: {', '.join(frame.columns)})",
                                    f"the table needs {', '.join(REQUIRED_COLUMNS)}; rename the column that holds "
                                    f"{wanted} to {wanted!r}", fatal=True))
        else:
            problems.append(Problem("missing_column", f"{path.name} header",
                                    f"metadata column {wanted!r} is missing", "it will be left blank"))
    frame = frame.rename(columns=rename)
    for col in frame.columns:
        frame[col] = frame[col].astype(str).str.strip()
    return frame, problems


def find_images(root: Path, exclude: Path | None = None) -> tuple[dict[str, Path], list[Problem]]:
    """Every image under ``root`` by id (file stem). The same id twice with the same size (e.g.
    Kaggle's upper- and lower-case folder copies) is one image; with different sizes it is a problem."""
    problems: list[Problem] = []
    images: dict[str, Path] = {}
    exclude = exclude.resolve() if exclude is not None else None
    identical = 0
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (exclude is None or (here / d).resolve() != exclude))
        for name in sorted(filenames):
            path = here / name
            if path.suffix.lower() not in IMAGE_SUFFIXES or name.startswith("."):
                continue
            image_id = path.stem
            if image_id in images:
                first = images[image_id]
                if first.stat().st_size == path.stat().st_size:
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


def verify_metadata(frame: pd.DataFrame, images: dict[str, Path], name: str,
                    root: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """Check rows against each other and against the image files; returns the usable rows."""
    problems: list[Problem] = []
    if any(c not in frame.columns for c in REQUIRED_COLUMNS):  # already a fatal missing_column problem
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS), dtype=str), problems
    line = pd.Series(range(2, len(frame) + 2), index=frame.index)  # file line numbers (header is 1)
    keep = pd.Series(True, index=frame.index)

    lower = frame["dx"].str.lower()
    frame = frame.assign(dx=lower.where(lower.isin(LABELS), frame["dx"]))
    for idx in frame.index[~frame["dx"].isin(LABELS)]:
        problems.append(Problem("unknown_label", f"{name} line {line[idx]} ({frame.at[idx, 'image_id']})",
                                f"unknown label {frame.at[idx, 'dx']!r}",
                                f"use one of {', '.join(LABELS)} or remove the row", fatal=True))
        keep[idx] = False

    for col in ("image_id",):
        blank = frame[col] == ""
        for idx in frame.index[blank]:
            problems.append(Problem("blank_field", f"{name} line {line[idx]}", f"empty {col}",
                                    f"fill in {col} or remove the row", fatal=True))
            keep[idx] = False
    blank_lesion = frame["lesion_id"] == ""
    if blank_lesion.any():
        for idx in frame.index[blank_lesion]:
            problems.append(Problem("blank_field", f"{name} line {line[idx]} ({frame.at[idx, 'image_id']})",
                                    "empty lesion_id", "the image is treated as its own lesion; fill in lesion_id "
                                    "so images of one lesion stay in one split"))
        frame = frame.assign(lesion_id=frame["lesion_id"].where(~blank_lesion, "lesion_of_" + frame["image_id"]))

    dup = frame["image_id"].duplicated(keep=False) & (frame["image_id"] != "")
    for image_id, group in frame[dup].groupby("image_id", sort=False):
        lines = ", ".join(str(line[i]) for i in group.index)
        same = len(group.drop_duplicates()) == 1
        problems.append(Problem("duplicate_row", f"{name} lines {lines}", f"image id {image_id} appears {len(group)} times"
                                + ("" if same else " with different values"),
                                "keep one row" + (" (identical rows: the first is used)" if same else
                                                  " and decide which lesion/label is right"), fatal=not same))
        keep[group.index[1:]] = False
        if not same:
            keep[group.index[0]] = False

    labels_per_lesion = frame[keep].groupby("lesion_id")["dx"].nunique()
    for lesion_id in labels_per_lesion.index[labels_per_lesion > 1]:
        rows = frame[keep & (frame["lesion_id"] == lesion_id)]
        detail = ", ".join(f"line {line[i]} {rows.at[i, 'dx']}" for i in rows.index[:6])
        problems.append(Problem("lesion_two_labels", f"{name} lesion {lesion_id}",
                                f"one lesion carries {rows['dx'].nunique()} labels ({detail})",
                                "correct the dx of its rows: all images of a lesion share one diagnosis", fatal=True))

    for idx in frame.index[keep]:
        image_id = frame.at[idx, "image_id"]
        path = images.get(image_id)
        if path is None:
            problems.append(Problem("missing_image", f"{name} line {line[idx]} ({image_id})",
                                    f"no image file {image_id}.jpg under {root}",
                                    "add the image or remove the row; the row is skipped"))
            keep[idx] = False
        elif path.stat().st_size == 0:
            problems.append(Problem("empty_image", str(path), "the image file is empty (0 bytes)",
                                    "re-download or replace it; the row is skipped"))
            keep[idx] = False

    listed = set(frame["image_id"])
    for image_id, path in images.items():
        if image_id not in listed:
            problems.append(Problem("orphan_image", str(path), f"image {image_id} has no metadata row",
                                    "add a row for it or remove the file; it is ignored"))
    for col in OPTIONAL_COLUMNS:
        if col not in frame.columns:
            frame[col] = ""
    return frame[keep].reset_index(drop=True), problems


def scan_raw(root: str | os.PathLike, exclude: Path | None = None,
             metadata: str | os.PathLike | None = None) -> RawData:
    """Find, read and verify a raw folder (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise PrepError(f"error: {root}: no such folder; pass the folder holding HAM10000_metadata.csv "
                        "and the image folders (or run `derma download ham10000 --out DIR`)")
    meta_path = Path(metadata) if metadata else find_metadata(root)
    frame, problems = read_metadata(meta_path)
    images, image_problems = find_images(root, exclude=exclude)
    problems += image_problems
    if not images:
        problems.append(Problem("no_images", str(root), "no .jpg or .png images found",
                                "unpack the image archives (HAM10000_images_part_1/ and _part_2/) here", fatal=True))
    usable, row_problems = verify_metadata(frame, images, meta_path.name, root)
    problems += row_problems
    return RawData(root, meta_path, usable, images, problems)
