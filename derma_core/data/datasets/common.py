"""What several dataset modules share: finding and reading a dataset's tables (through
:mod:`derma_core.data.raw`'s helpers, keeping the dataset's own column names),
assembling the reader's :class:`~derma_core.data.raw.RawData`, and small helpers for the
synthetic writers (group numbering, ages, writing tables).

Readers keep each dataset's own column names; the generic preparation code then verifies the
rows (labels, duplicates, images) and reports each problem with the row's ``_line``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..raw import Problem, RawData

#: The columns a reader puts first, in this order (``split`` and ``_line`` when present).
LEADING_COLUMNS = ("image_id", "dx", "group_id", "split", "_line")


def prep_error(message: str) -> Exception:
    """The one-line fatal error of ``derma prep`` (:class:`~derma_core.data.raw.PrepError`)."""
    from ..raw import PrepError

    return PrepError(message if message.startswith("error") else f"error: {message}")


def problem(code: str, where: str, message: str, fix: str, fatal: bool = False) -> "Problem":
    from ..raw import Problem

    return Problem(code, where, message, fix, fatal=fatal)


def require_folder(root: Path, title: str, layout: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise prep_error(f"{root}: no such folder; pass the folder holding the {title} files ({layout})")
    return root


def find_file(root: Path, names: Sequence[str], title: str, layout: str) -> Path:
    """The dataset's main table (:func:`derma_core.data.raw.find_table`: the first of ``names``,
    case-insensitive, else the folder's only table); a one-line error saying the layout otherwise."""
    from ..raw import find_table

    return find_table(Path(root), names, f"{title} table", f"check the layout ({title}: {layout})")


def find_optional(root: Path, names: Sequence[str]) -> Path | None:
    """A further file a dataset may lack (case-insensitive name in ``root``): None when absent."""
    wanted = [n.lower() for n in names]
    present = {p.name.lower(): p for p in Path(root).iterdir() if p.is_file()} if Path(root).is_dir() else {}
    return next((present[n] for n in wanted if n in present), None)


def read_table(path: Path, title: str, required: Sequence[str] = ()) -> "pd.DataFrame":
    """A table as strings with its ``_line`` column (:func:`derma_core.data.raw.read_table`),
    the dataset's own column names kept (no renaming); a missing ``required`` column stops with
    one line naming it."""
    from ..raw import read_table as read

    frame, problems = read(path, required=required, aliases={}, fill_optional=False,
                           hint=f"download the {title} table again")
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise prep_error(fatal[0].line().replace("error: ", "", 1) + f" (is this the {title} table?)")
    return frame


def drop_index_columns(frame: "pd.DataFrame") -> "pd.DataFrame":
    """Drop the unnamed index column pandas writes (``""`` / ``Unnamed: 0`` in the header)."""
    unnamed = [c for c in frame.columns if c == "" or re.fullmatch(r"Unnamed: \d+", c)]
    return frame.drop(columns=unnamed)


def raw_data(root: Path, metadata_path: Path, frame: "pd.DataFrame", images: Mapping[str, Path],
             problems: list) -> "RawData":
    """The reader's result: columns image_id, dx, group_id (split, _line when present) first,
    then the dataset's own columns as strings."""
    from ..raw import RawData

    lead = [c for c in LEADING_COLUMNS if c in frame.columns]
    frame = frame[lead + [c for c in frame.columns if c not in lead]].reset_index(drop=True)
    return RawData(root=Path(root), metadata_path=Path(metadata_path), metadata=frame, images=dict(images),
                   problems=problems)


def find_images(root: Path) -> tuple[dict[str, Path], list]:
    """Every image under ``root`` by file stem (:func:`derma_core.data.raw.find_images`)."""
    from ..raw import find_images as scan

    return scan(Path(root))


def images_by_path(root: Path, relative: Iterable[str]) -> dict[str, Path]:
    """The files named by a dataset's own file column (paths relative to ``root``), matched
    case-insensitively (``NEL/NEL025.JPG`` finds ``nel/NEL025.jpg``); value -> file for those found."""
    index: dict[str, Path] = {}
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                index.setdefault(path.relative_to(root).as_posix().lower(), path)
    found = {}
    for value in relative:
        path = index.get(str(value).replace("\\", "/").strip("/").lower())
        if path is not None:
            found[value] = path
    return found


def slug(text: str) -> str:
    """A readable class code from a label string: ``"Lichen planus"`` -> ``lichen_planus``."""
    out = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")
    if not out:
        raise ValueError(f"label {text!r} gives an empty class code")
    return out


def normalise_number(value: str) -> str:
    """``"3.0"`` -> ``"3"`` (pandas writes integer columns with blanks as floats); others unchanged."""
    m = re.fullmatch(r"(-?\d+)\.0+", value)
    return m.group(1) if m else value


def map_values(series: "pd.Series", func) -> list:
    """``[func(v) for v in series]``, computed once per distinct value (fast on long columns)."""
    values = series.tolist()
    cache = {v: func(v) for v in set(values)}
    return [cache[v] for v in values]


def one_of(value: str, choices: Mapping[str, str]) -> str:
    """``choices[value.lower()]`` when there, else ``value`` unchanged (the generic verification
    then refuses it, naming the row)."""
    return choices.get(str(value).strip().lower(), value)


# ---------------------------------------------------------------- synthetic writers

def group_numbers(values: Sequence[Any]) -> list[int]:
    """Each value's group number in order of first appearance (0, 1, 2, ...)."""
    seen: dict[Any, int] = {}
    return [seen.setdefault(v, len(seen)) for v in values]


def age_value(age: Any) -> int | None:
    """An age from the draws as an int, None when missing (NA/NaN/blank)."""
    import pandas as pd

    if age is None or (not isinstance(age, str) and pd.isna(age)) or str(age).strip() == "":
        return None
    return int(round(float(age)))


def age_approx(age: Any) -> int | None:
    """ISIC's ``age_approx``: the age rounded to 5 years."""
    value = age_value(age)
    return None if value is None else int(5 * round(value / 5))


def skin_type(value: Any, default: int = 3) -> int:
    """A Fitzpatrick type 1-6 from the draws (``default`` when missing)."""
    v = age_value(value)
    return default if v is None else min(6, max(1, v))


def write_table(path: Path, rows: "pd.DataFrame | list[dict]", columns: Sequence[str] | None = None) -> Path:
    import pandas as pd

    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=list(columns) if columns else None)
    if columns is not None:
        frame = frame[list(columns)]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def draw_column(draws: "pd.DataFrame", name: str, default: Any = "") -> list:
    """A column of the synthetic draws as a list (``default`` for each row when absent)."""
    if name in draws.columns:
        return list(draws[name])
    return [default] * len(draws)


__all__ = ["LEADING_COLUMNS", "prep_error", "problem", "require_folder", "find_file", "find_optional", "read_table",
           "drop_index_columns", "raw_data", "find_images", "images_by_path",
           "slug", "normalise_number", "map_values", "one_of", "group_numbers", "age_value", "age_approx", "skin_type",
           "write_table", "draw_column"]
