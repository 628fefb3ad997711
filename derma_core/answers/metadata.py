"""The metadata join of ``derma eval-answers``: groups (lesion ids) and subgroup columns attached
to an answer split by image id, from a HAM10000-style metadata table (``--metadata``) or a
prepared folder (``--prepared``). Images missing from the table are kept and reported, never dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import AnswerFileError


@dataclass
class MetadataJoin:
    """What ``--metadata``/``--prepared`` attached: the images found, those missing from the
    table, label clashes."""

    path: str
    matched: int
    missing: list[str]
    label_mismatch: list[tuple[str, str, str]]  # (image id, question's answer, metadata's label)
    columns: list[str]

    def as_info(self) -> dict[str, Any]:
        return {"metadata": self.path, "metadata_matched": self.matched, "metadata_missing": self.missing,
                "metadata_label_mismatch": [list(t) for t in self.label_mismatch],
                "metadata_columns": self.columns}


def _join_metadata(split: Any, table: Any, columns: list[str], source: str) -> tuple[Any, MetadataJoin]:
    """``split`` with ``group_id`` and ``columns`` taken from ``table`` (indexed by image id, with
    ``group_id`` and ``label`` columns), matched by the questions' image file stems. Images
    missing from the table keep their own group and empty metadata (the ``missing`` subgroup)."""
    from ..interfaces import Split

    frame = split.frame.copy()
    image_ids = frame["image_path"].map(lambda v: Path(str(v)).stem)
    found = image_ids.isin(table.index).to_numpy()
    hit = image_ids[found]
    frame.loc[found, "group_id"] = table.loc[hit, "group_id"].astype(str).to_numpy()
    for col in columns:
        frame[col] = ""
        frame.loc[found, col] = table.loc[hit, col].astype(str).to_numpy()
    mismatch = []
    if "label" in table.columns:
        other = table.loc[hit, "label"].astype(str).to_numpy()
        truth = frame.loc[found, "label"].astype(str).to_numpy()
        mismatch = [(i, t, d) for i, t, d in zip(hit, truth, other) if d and d != t]
    join = MetadataJoin(source, int(found.sum()), image_ids[~found].tolist(), mismatch, columns)
    return Split(split.name, frame, split.root, split.cache, label_set=split.label_set), join


def attach_metadata(split: Any, metadata: str | os.PathLike) -> tuple[Any, MetadataJoin]:
    """The answer split with ``group_id`` (HAM10000's ``lesion_id``) and the metadata columns
    (sex, age, localization, dx_type) of a HAM10000-style table, matched by image id (the
    question's ``image`` file stem).

    Images missing from the table keep their own question id as group and empty metadata
    (the ``missing`` subgroup): they are reported in :class:`MetadataJoin`, never dropped."""
    from ..data.raw import OPTIONAL_COLUMNS, PrepError, read_metadata

    path = Path(metadata)
    try:
        table, _ = read_metadata(path)
    except PrepError as exc:
        raise AnswerFileError(str(exc).removeprefix("error: ")) from None
    if "image_id" not in table.columns or "lesion_id" not in table.columns:
        raise AnswerFileError(f"{path}: the metadata table needs image_id and lesion_id columns "
                              f"(has {', '.join(table.columns)}); pass HAM10000_metadata.csv")
    table = table.assign(image_id=table["image_id"].map(lambda v: Path(str(v)).stem))
    table = table.drop_duplicates("image_id", keep="first").set_index("image_id")
    table = table.rename(columns={"lesion_id": "group_id", "dx": "label"})
    return _join_metadata(split, table, [c for c in OPTIONAL_COLUMNS if c in table.columns], str(path))


def attach_prepared(split: Any, dataset: Any) -> tuple[Any, MetadataJoin]:
    """The answer split with ``group_id`` and every metadata column of a prepared dataset's
    splits (its own subgroup columns), matched by image id (the question's ``image`` file stem
    is the prepared image id, as ``derma vqa`` writes it)."""
    import pandas as pd

    from ..interfaces import SPLIT_COLUMNS

    table = pd.concat([s.frame for s in dataset.splits.values()], ignore_index=True)
    table = table.assign(id=table["id"].astype(str)).drop_duplicates("id", keep="first").set_index("id")
    columns = [c for c in table.columns if c not in SPLIT_COLUMNS]
    return _join_metadata(split, table, columns, str(dataset.dir or dataset.name))
