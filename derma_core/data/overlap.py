"""The leakage guard: images of an evaluation set that a classifier already saw in training.

Evaluating a model fitted on dataset A on another dataset B says nothing about generalisation
when B holds A's training images: ISIC 2019 contains every HAM10000 image, ISIC Archive exports
contain the challenge sets, and a copy may sit in another collection re-encoded or resized.
:func:`find_overlap` compares A's training and validation images with B's evaluated images in
four ways, each counted on its own:

``id``      the same image id, where ids share a namespace: within one dataset, or ISIC image
            ids (``ISIC_0024306``), which are unique across every ISIC collection;
``bytes``   the same file content: the SHA-256 of the raw file, recorded per image by
            ``derma prep`` (``state.json``) — a renamed copy;
``pixels``  a perceptual hash (pHash, :mod:`imagehash`) of the prepared image within
            :data:`PIXEL_THRESHOLD` bits — a re-encoded, recompressed or resized copy;
``listed``  a published link: the organisers' duplicate list (ISIC 2020's
            ``ISIC_2020_Training_Duplicates.csv`` found in a side's raw folder, or given), and
            the ISIC lesion ids shared across collections (``HAM_``, ``BCN_``, ``MSK``, ``IL_``:
            ISIC 2019 lists each HAM10000 image under its HAM10000 lesion id), so other images
            of a training lesion count too.

The total is the number of distinct B images found by any of them. ``derma overlap A=DIR B=DIR``
prints the counts; ``derma run --eval-dataset`` excludes the images before evaluating
(:mod:`derma_core.evaluation.crossdataset`).

The perceptual hashes are computed once per prepared folder and cached beside its image cache
(``cache/phash16.npy``, keyed by the folder's digest); matching is a vectorised bit count over
numpy arrays that prunes candidates word by word, so 10,000 x 25,000 images take seconds.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

KINDS = ("id", "bytes", "pixels", "listed")

#: pHash side: 16 x 16 = 256 bits from the low frequencies of a 64 x 64 greyscale DCT.
PHASH_SIZE = 16
#: Two prepared images are the same picture when their 256-bit pHashes differ in at most this
#: many bits (12.5 %). Measured with derma's own resize (``derma prep``) on the 75 real HAM10000
#: images in ../shared/data and on 150 synthetic HAM10000 and PAD-UFES-20 drawings, each copied
#: four ways before preparation (JPEG quality 50/75/90, PNG; resized to 30-70 %):
#:
#: * prepared at 64 px or more on both sides, every copy is within 20 bits of its original (224 px:
#:   within 12), while distinct images are >= 44 bits apart (synthetic lesions, drawn in one style
#:   per class; real images >= 86, mean 126, sd 9: 32 bits is 10 sd below the mean, so even
#:   10,000 x 25,000 pairs of real images give no chance match);
#: * prepared at 32 px, a 256-bit hash reads frequencies near the image's resolution: copies
#:   reach 22-36 bits for real images (95 % within 27) and up to ~50 for the smoothest synthetic
#:   ones (95 % within 34), so some copies are missed there, and :func:`prepared_side` says so.
#:
#: 64-bit hashes (the default pHash) separated nothing on synthetic sets: copies up to 10 bits
#: apart at 32 px, distinct drawings as close as 4.
PIXEL_THRESHOLD = 32
#: Below this prepared side the pixel check misses some copies (see :data:`PIXEL_THRESHOLD`).
RELIABLE_SIDE = 64
PHASH_FILE = f"cache/phash{PHASH_SIZE}.npy"
PHASH_INFO = f"cache/phash{PHASH_SIZE}.json"

#: Image ids unique across every ISIC collection (HAM10000, ISIC 2016-2020, BCN20000, archive exports).
ISIC_IMAGE_ID = re.compile(r"^ISIC_\d{7}$")
#: Lesion ids the ISIC collections share (HAM10000's HAM_, BCN20000's BCN_, MSK's, the archive's IL_).
ISIC_LESION_ID = re.compile(r"^(HAM|BCN|MSK\d*|IL)_\d+$")
#: Published duplicate lists a raw folder may hold (two columns: the two images of a pair).
DUPLICATE_LISTS = ("ISIC_2020_Training_Duplicates.csv",)


@dataclass
class Side:
    """The images of one side of a comparison: ids, groups, split names and, when known, the
    raw files' SHA-256, the pHashes ((N, 4) uint64) and published duplicate pairs."""

    name: str
    ids: np.ndarray
    groups: np.ndarray
    splits: np.ndarray
    sha256: np.ndarray | None = None
    phash: np.ndarray | None = None
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    label: str = ""  # what the output calls it (default: the dataset name)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=str)
        self.groups = np.asarray(self.groups, dtype=str)
        self.splits = np.asarray(self.splits, dtype=str)
        n = len(self.ids)
        for what in ("groups", "splits"):
            if len(getattr(self, what)) != n:
                raise ValueError(f"overlap side {self.name}: {len(getattr(self, what))} {what} for {n} images")
        if self.sha256 is not None and len(self.sha256) != n:
            raise ValueError(f"overlap side {self.name}: {len(self.sha256)} hashes for {n} images")
        if self.phash is not None and self.phash.shape[0] != n:
            raise ValueError(f"overlap side {self.name}: {self.phash.shape[0]} pHashes for {n} images")

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self) -> str:
        splits = "+".join(dict.fromkeys(self.splits.tolist())) or "no"
        return f"{self.label or self.name} ({splits} split, {len(self)} images)"


# ---------------------------------------------------------------- perceptual hashes

def phash_rows(images: np.ndarray | Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
    """The 256-bit pHash of each (H, W, 3) uint8 image as 4 uint64 words: (N, 4)."""
    import imagehash
    from PIL import Image

    out = np.zeros((len(images), PHASH_SIZE * PHASH_SIZE // 64), dtype=np.uint64)
    rows: Iterable[int] = range(len(images))
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="perceptual hashes", leave=False, dynamic_ncols=True)
    for i in rows:
        bits = imagehash.phash(Image.fromarray(np.asarray(images[i])), hash_size=PHASH_SIZE).hash
        out[i] = np.packbits(bits.reshape(-1)).view(">u8").astype(np.uint64)
    return out


def prepared_phashes(folder: Path, cache: np.ndarray, digest: str, progress: bool = False) -> np.ndarray:
    """The pHash of every row of a prepared folder's ``cache/images.npy``, from
    :data:`PHASH_FILE` when it was computed for this digest and shape, else computed and
    written there (atomically; a read-only folder just recomputes next time)."""
    from ..atomic import write_bytes as atomic_write_bytes, write_json as atomic_write_json

    folder = Path(folder)
    key = {"digest": digest, "rows": int(len(cache)), "hash_size": PHASH_SIZE, "algorithm": "imagehash.phash"}
    info_path, path = folder / PHASH_INFO, folder / PHASH_FILE
    try:
        if json.loads(info_path.read_text()) == key:
            hashes = np.load(path)
            if hashes.shape == (len(cache), PHASH_SIZE * PHASH_SIZE // 64) and hashes.dtype == np.uint64:
                return hashes
    except (OSError, ValueError):
        pass
    hashes = phash_rows(cache, progress=progress)
    try:
        import io

        buf = io.BytesIO()
        np.save(buf, hashes)
        atomic_write_bytes(path, buf.getvalue())
        atomic_write_json(info_path, key)
    except OSError:  # a read-only prepared folder: the hashes are used, not kept
        pass
    return hashes


def hamming_pairs(a: np.ndarray, b: np.ndarray, threshold: int = PIXEL_THRESHOLD,
                  budget: int = 4_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j) with Hamming distance(a[i], b[j]) <= ``threshold`` between two (N, W)
    uint64 hash arrays, with the distances. A block of rows of ``a`` is compared with all of
    ``b`` on the first two words (about ``budget`` pairs at a time); the survivors are checked
    word by word, the partial distance pruning them."""
    a = np.ascontiguousarray(a, dtype=np.uint64)
    b = np.ascontiguousarray(b, dtype=np.uint64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"hash arrays of shapes {a.shape} and {b.shape} cannot be compared")
    if not len(a) or not len(b):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    words = a.shape[1]
    lead = min(2, words)  # 128 bits: a random pair passes with p ~ 1e-8 at 32 bits, one word would pass half
    columns = [np.ascontiguousarray(b[:, w]) for w in range(lead)]
    step = max(1, budget // len(b))
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(a), step):
        block = a[start:start + step]
        d = np.bitwise_count(block[:, 0, None] ^ columns[0][None, :])
        for w in range(1, lead):
            d += np.bitwise_count(block[:, w, None] ^ columns[w][None, :])
        ii, jj = np.nonzero(d <= threshold)
        dist = d[ii, jj].astype(np.int64)
        for w in range(lead, words):
            if not len(ii):
                break
            dist += np.bitwise_count(block[ii, w] ^ b[jj, w]).astype(np.int64)
            keep = dist <= threshold
            ii, jj, dist = ii[keep], jj[keep], dist[keep]
        out_i.append(ii + start)
        out_j.append(jj)
        out_d.append(dist)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


# ---------------------------------------------------------------- building the sides

def read_duplicate_list(path: Path) -> list[tuple[str, str]]:
    """A published duplicates file: the first two columns of each row are the two images of a
    pair (file names become their stems). A one-line error for a file that is not that."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: cannot read the duplicate list ({exc}); give a CSV with two columns "
                         "image_name_1,image_name_2") from None
    if frame.shape[1] < 2:
        raise ValueError(f"{path}: a duplicate list needs two columns (the two images of each pair), found "
                         f"{list(frame.columns)}")
    first, second = frame.columns[:2]
    return [(Path(x).stem, Path(y).stem) for x, y in zip(frame[first], frame[second]) if x and y]


def _raw_duplicates(manifest: dict) -> tuple[list[tuple[str, str]], list[str]]:
    raw = (manifest.get("source") or {}).get("raw")
    if not raw or not Path(raw).is_dir():
        return [], []
    present = {p.name.lower(): p for p in Path(raw).iterdir() if p.is_file()}
    pairs, used = [], []
    for name in DUPLICATE_LISTS:
        path = present.get(name.lower())
        if path is not None:
            pairs += read_duplicate_list(path)
            used.append(str(path))
    return pairs, used


def _state_hashes(folder: Path, ids: Sequence[str]) -> np.ndarray | None:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None
    images = state.get("images") or {}
    return np.array([str((images.get(i) or {}).get("sha256") or "") for i in ids], dtype=str)


def prepared_side(folder: str | os.PathLike, splits: Sequence[str] = ("train", "val"), *, pixels: bool = True,
                  duplicates: Sequence[str | os.PathLike] = (), progress: bool = False, dataset: Any = None) -> Side:
    """The images of ``splits`` (``all``: every split) of a prepared folder (``derma prep``):
    ids, groups, the raw files' SHA-256 (``state.json``), pHashes (cached, see
    :func:`prepared_phashes`) and the duplicate lists in its raw folder plus ``duplicates``.
    ``dataset`` is the loaded :class:`~derma_core.interfaces.Dataset` when the caller has it."""
    from .prepare import load_prepared
    from .splits import SPLITS

    folder = Path(folder)
    if dataset is None:
        dataset = load_prepared(folder)
    wanted = list(SPLITS) if list(splits) == ["all"] or "all" in splits else list(splits)
    unknown = [s for s in wanted if s not in dataset.splits]
    if unknown:
        raise ValueError(f"{folder}: no split {unknown[0]!r} (splits: {', '.join(dataset.splits)}, or all)")
    parts = [dataset[s] for s in wanted]
    ids = [i for p in parts for i in p.ids]
    groups = [g for p in parts for g in p.group_ids]
    names = [p.name for p in parts for _ in range(len(p))]
    side = Side(dataset.descriptor.name, np.array(ids, dtype=str), np.array(groups, dtype=str),
                np.array(names, dtype=str), dir=folder)
    side.sha256 = _state_hashes(folder, ids)
    if side.sha256 is None:
        side.notes.append(f"bytes not checked for {side.name}: {folder} has no state.json (prepare it again)")
    if pixels:
        if any(p.cache is None for p in parts):
            side.notes.append(f"pixels not checked for {side.name}: {folder} has no image cache")
        else:
            full = np.load(folder / (dataset.manifest.get("cache") or {}).get("file", "cache/images.npy"),
                           mmap_mode="r")
            hashes = prepared_phashes(folder, full, str(dataset.manifest.get("digest", "")), progress=progress)
            # cache rows are the split tables' rows, train then val then test (a CV fold regroups them)
            order = [i for s in SPLITS for i in pd.read_csv(folder / "splits" / f"{s}.csv", dtype=str,
                                                            keep_default_na=False, usecols=["id"])["id"]]
            if len(order) != len(hashes):
                raise ValueError(f"{folder}: the image cache has {len(hashes)} rows, the split tables {len(order)}; "
                                 "re-run `derma prep`")
            row_of = {i: k for k, i in enumerate(order)}
            side.phash = hashes[[row_of[i] for i in ids]]
            if full.ndim == 4 and min(full.shape[1:3]) < RELIABLE_SIDE:
                side.notes.append(f"pixels: {folder} is prepared at {min(full.shape[1:3])} px; copies re-encoded or "
                                  f"resized before preparation may be missed below {RELIABLE_SIDE} px")
    pairs, used = _raw_duplicates(dataset.manifest)
    for path in duplicates:
        pairs += read_duplicate_list(Path(path))
        used.append(str(path))
    side.duplicates = pairs
    return side


def dataset_side(dataset: Any, splits: Sequence[str] = ("train", "val"), pixels: bool = True) -> Side:
    """A side from a loaded :class:`~derma_core.interfaces.Dataset`: :func:`prepared_side` when it
    is a prepared folder, else its splits' ids, groups and (cached images) pHashes, computed here."""
    if dataset.dir is not None and (Path(dataset.dir) / "manifest.json").exists():
        return prepared_side(dataset.dir, splits, pixels=pixels, dataset=dataset)
    parts = [dataset[s] for s in splits]
    side = Side(dataset.descriptor.name, np.array([i for p in parts for i in p.ids], dtype=str),
                np.array([g for p in parts for g in p.group_ids], dtype=str),
                np.array([p.name for p in parts for _ in range(len(p))], dtype=str))
    side.notes.append(f"bytes not checked for {side.name}: it is not a prepared folder (no raw-file hashes)")
    if pixels and all(p.cache is not None for p in parts):
        side.phash = np.concatenate([phash_rows(p.cache) for p in parts])
    elif pixels:
        side.notes.append(f"pixels not checked for {side.name}: it has no image cache")
    return side


def frame_side(name: str, frame: pd.DataFrame, split: str = "all", id_column: str = "id",
               group_column: str | None = "group_id") -> Side:
    """A side from a metadata table (ids and groups only: the id and listed checks), e.g. a
    dataset's published metadata without its images."""
    ids = frame[id_column].astype(str).to_numpy()
    groups = frame[group_column].astype(str).to_numpy() if group_column else ids
    return Side(name, ids, groups, np.full(len(ids), split, dtype=object).astype(str))


# ---------------------------------------------------------------- the comparison

@dataclass
class OverlapResult:
    """The pairs found (a B image, an A image, how) and the distinct B images per kind."""

    a: Side
    b: Side
    pairs: pd.DataFrame
    threshold: int = PIXEL_THRESHOLD
    notes: list[str] = field(default_factory=list)

    def b_ids(self, kind: str | None = None) -> set[str]:
        frame = self.pairs if kind is None else self.pairs[self.pairs["kind"] == kind]
        return set(frame["b_id"].astype(str))

    @property
    def counts(self) -> dict[str, int]:
        """Distinct B images found by each kind, and in all (``total``)."""
        out = {kind: len(self.b_ids(kind)) for kind in KINDS}
        out["total"] = len(self.b_ids())
        return out

    @property
    def excluded(self) -> pd.DataFrame:
        """One row per B image found: id, the kinds that found it and one A image it matches."""
        if self.pairs.empty:
            return pd.DataFrame(columns=["id", "kinds", "a_id", "a_split"])
        rows = []
        for b_id, group in self.pairs.groupby("b_id", sort=False):
            kinds = [k for k in KINDS if k in set(group["kind"])]
            first = group.iloc[0]
            rows.append({"id": b_id, "kinds": ",".join(kinds), "a_id": first["a_id"], "a_split": first["a_split"]})
        return pd.DataFrame(rows)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["pairs"] = self.pairs.to_dict("records")
        for key, side in (("a", self.a), ("b", self.b)):
            out[key] = {"name": side.label or side.name, "dataset": side.name,
                        "dir": str(side.dir) if side.dir else None,
                        "splits": list(dict.fromkeys(side.splits.tolist())), "images": len(side)}
        out["pixel_threshold"] = self.threshold
        out["notes"] = self.notes
        return out

    def lines(self) -> list[str]:
        counts = self.counts
        out = [f"overlap of {self.b.describe()} with {self.a.describe()}:"]
        what = {"id": "same image id", "bytes": "same file bytes (SHA-256)",
                "pixels": f"same pixels (pHash within {self.threshold}/{PHASH_SIZE * PHASH_SIZE} bits)",
                "listed": "published duplicate list or shared ISIC lesion id"}
        for kind in KINDS:
            out.append(f"  {kind:<7} {counts[kind]:>7}  {what[kind]}")
        out.append(f"  {'total':<7} {counts['total']:>7}  distinct images of {self.b.label or self.b.name} "
                   "found by any")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _namespace(ids: np.ndarray, dataset: str) -> np.ndarray:
    isic = np.array([bool(ISIC_IMAGE_ID.match(i)) for i in ids], dtype=bool)
    return np.where(isic, "isic", dataset)


def find_overlap(a: Side, b: Side, threshold: int = PIXEL_THRESHOLD) -> OverlapResult:
    """Every image of ``b`` that duplicates an image of ``a``, by id, bytes, pixels and published
    lists (see the module docstring); one row per (B image, A image, kind) pair."""
    rows: list[pd.DataFrame] = []

    def add(b_rows: np.ndarray, a_rows: np.ndarray, kind: str, detail: Sequence[Any] | str = "") -> None:
        if len(b_rows):
            rows.append(pd.DataFrame({"b_id": b.ids[b_rows], "b_split": b.splits[b_rows], "a_id": a.ids[a_rows],
                                      "a_split": a.splits[a_rows], "kind": kind, "detail": detail}))

    def join(left: pd.Series, right: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(B row, A row) of equal keys; a missing key (None) matches nothing."""
        lhs = pd.DataFrame({"key": left, "b_row": np.arange(len(left))}).dropna(subset=["key"])
        rhs = pd.DataFrame({"key": right, "a_row": np.arange(len(right))}).dropna(subset=["key"])
        merged = lhs.merge(rhs, on="key")
        return merged["b_row"].to_numpy(), merged["a_row"].to_numpy()

    # id, within a namespace (the dataset, or ISIC's image ids)
    b_key = pd.Series(np.char.add(np.char.add(_namespace(b.ids, b.name), "\x00"), b.ids))
    a_key = pd.Series(np.char.add(np.char.add(_namespace(a.ids, a.name), "\x00"), a.ids))
    add(*join(b_key, a_key), "id")
    notes = list(dict.fromkeys(a.notes + b.notes))
    # bytes
    if a.sha256 is not None and b.sha256 is not None:
        b_rows, a_rows = join(pd.Series(np.where(b.sha256 == "", None, b.sha256)),
                              pd.Series(np.where(a.sha256 == "", None, a.sha256)))
        add(b_rows, a_rows, "bytes")
    # pixels
    if a.phash is not None and b.phash is not None:
        a_rows, b_rows, dist = hamming_pairs(a.phash, b.phash, threshold)
        add(b_rows, a_rows, "pixels", [f"{int(d)} bits" for d in dist])
    # listed: published duplicate pairs, either way round
    pairs = list(dict.fromkeys(a.duplicates + b.duplicates))
    if pairs:
        left = pd.DataFrame(pairs, columns=["x", "y"])
        both = pd.concat([left, left.rename(columns={"x": "y", "y": "x"})], ignore_index=True)
        b_pos = pd.DataFrame({"x": b.ids, "b_row": np.arange(len(b))})
        a_pos = pd.DataFrame({"y": a.ids, "a_row": np.arange(len(a))})
        linked = both.merge(b_pos, on="x").merge(a_pos, on="y")
        add(linked["b_row"].to_numpy(), linked["a_row"].to_numpy(), "listed", "duplicate list")
    # listed: ISIC lesion ids shared across collections
    b_lesion = np.array([bool(ISIC_LESION_ID.match(g)) for g in b.groups], dtype=bool)
    a_lesion = np.array([bool(ISIC_LESION_ID.match(g)) for g in a.groups], dtype=bool)
    if b_lesion.any() and a_lesion.any():
        b_rows, a_rows = join(pd.Series(np.where(b_lesion, b.groups, None)), pd.Series(np.where(a_lesion, a.groups,
                                                                                                 None)))
        add(b_rows, a_rows, "listed", [f"lesion {g}" for g in b.groups[b_rows]])
    columns = ["b_id", "b_split", "a_id", "a_split", "kind", "detail"]
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    return OverlapResult(a, b, frame[columns].reset_index(drop=True), threshold, notes)


def overlap_of_folders(a_dir: str | os.PathLike, b_dir: str | os.PathLike, a_splits: Sequence[str] = ("train", "val"),
                       b_splits: Sequence[str] = ("all",), threshold: int = PIXEL_THRESHOLD,
                       duplicates: Sequence[str | os.PathLike] = (), progress: bool = False) -> OverlapResult:
    """:func:`find_overlap` of two prepared folders: A's ``a_splits`` against B's ``b_splits``."""
    a = prepared_side(a_dir, a_splits, duplicates=duplicates, progress=progress)
    b = prepared_side(b_dir, b_splits, progress=progress)
    return find_overlap(a, b, threshold)


__all__ = ["KINDS", "PHASH_SIZE", "PIXEL_THRESHOLD", "RELIABLE_SIDE", "Side", "OverlapResult", "dataset_side",
           "find_overlap", "frame_side", "hamming_pairs", "overlap_of_folders", "phash_rows", "prepared_phashes",
           "prepared_side", "read_duplicate_list"]
