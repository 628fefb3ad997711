"""Synthetic datasets in any registered dataset's raw layout, drawn from scratch.

``generate(out, n, seed, dataset=...)`` draws ``n`` rows for the dataset's descriptor (its label
set, its class proportions with a minimum per class so that every class reaches every split, its
grouping: several images per lesion or patient, or one image per row; generic metadata: age,
sex, anatomical site, Fitzpatrick skin type; an official ``split`` where the dataset has one),
hands them to the descriptor's ``synth_writer`` (which writes the metadata files in the
dataset's layout and says where each image goes) and draws the images there, in parallel.

Each class has its own learnable appearance (lesion colour, size, border irregularity, edge
blur, texture), for any number of classes: derived from the class index, or taken from the
writer's :class:`SynthProfile` (HAM10000's seven classes keep their hand-made look). Per-image
noise, lighting, skin tone and a share of atypical lesions (drawn like another class) keep it
from being trivially separable. Clinical datasets get a photo-like background instead of the
dermoscope's round field.

The default, ``generate(out, n, seed)``, is the built-in synthetic HAM10000 set (the
``synthetic`` source); its files depend only on ``(GENERATOR_VERSION, n, seed)``.

It is NOT medical data: every image is a drawing. A synthetic raw folder holds
``derma_synthetic.json``, so ``derma prep`` records ``synthetic: true`` and runs on it are tagged
``derma.synthetic=true``.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..labels import LabelSet

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .descriptor import DatasetDescriptor

#: Bump when the drawing changes, so cached synthetic sets are regenerated.
GENERATOR_VERSION = 2

#: The file that marks a raw folder as synthetic (``derma prep`` reads it).
MARKER = "derma_synthetic.json"

WIDTH, HEIGHT = 600, 450

#: Share of lesions drawn with another class's appearance (keeps accuracy below 100%).
ATYPICAL_RATE = 0.08
#: Images every class gets at least, so each one reaches train, val and test.
MIN_PER_CLASS = 12

#: The columns of the ``draws`` frame a synthetic writer receives (see descriptor.SynthWriter).
DRAW_COLUMNS = ("image_id", "dx", "group_id", "age", "sex", "site", "skin_type")

TEXTURES = ("scale", "vessels", "crypts", "white_centre", "blotches", "network", "lobules")

_SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "foot",
          "unknown", "neck", "scalp", "hand", "ear", "genital", "acral")
_SITE_P = np.array([22, 21, 14, 11, 10, 7, 4, 3, 2, 2, 1.3, 1, 0.6, 0.5, 0.1])
#: Fitzpatrick skin types 1-6 (a dermatology clinic's mix, mostly light skin).
_SKIN_P = np.array([0.15, 0.35, 0.28, 0.12, 0.06, 0.04])
#: Skin brightness per Fitzpatrick type (a factor on a light skin tone).
_SKIN_FACTOR = (1.04, 0.97, 0.88, 0.74, 0.58, 0.44)
_DEFAULT_AGE = (55.0, 17.0)


@dataclass(frozen=True)
class SynthProfile:
    """Per-class details a dataset may give its synthetic set (every field optional):

    * ``styles``: code -> appearance (``rgb``, ``radius`` as a fraction of the image height,
      ``irregular`` border amplitude, edge ``blur`` in px, ``texture`` one of
      :data:`TEXTURES`); classes without one get :func:`generic_style` of their index;
    * ``age``: code -> (mean, sd) in years;
    * ``extra``: column -> {code: ((value, probability), ...)}: per-class categorical columns
      drawn for each group (HAM10000's ``dx_type``);
    * ``image_id`` / ``group_id``: id formats (``"ISIC_{:07d}"``).
    """

    styles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    age: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    extra: Mapping[str, Mapping[str, tuple[tuple[str, float], ...]]] = field(default_factory=dict)
    image_id: str = "SYN_{:07d}"
    group_id: str = ""
    #: draw the skin tone from the lesion alone (HAM10000's look) instead of from its skin type
    tone_from_lesion: bool = False


class ProfiledWriter:
    """A synthetic writer with a :class:`SynthProfile`: ``ProfiledWriter(write, profile)`` is
    called like ``write`` (the descriptor's ``synth_writer`` contract) and carries the profile
    the generator reads."""

    def __init__(self, write: Callable[[Path, pd.DataFrame, Mapping[str, str]], list[Path]],
                 profile: SynthProfile) -> None:
        self.write = write
        self.profile = profile

    def __call__(self, out: Path, draws: pd.DataFrame, options: Mapping[str, str]) -> list[Path]:
        return self.write(out, draws, options)


def profile_of(descriptor: "DatasetDescriptor") -> SynthProfile:
    return getattr(descriptor.synth_writer, "profile", None) or SynthProfile()


# ---------------------------------------------------------------- how many, how they look

def class_counts(n: int, weights: Mapping[str, float], min_per_class: int = MIN_PER_CLASS) -> dict[str, int]:
    """Images per class for a set of ``n``: proportional to ``weights`` (largest remainder), with
    at least ``min_per_class`` images of every class so each one reaches every split; the
    classes above the minimum share the rest in the given proportions. The order of ``weights``
    is the order of the result."""
    codes = list(weights)
    if n < min_per_class * len(codes) * 2:
        raise ValueError(f"synthetic set: n={n} is too small for {len(codes)} classes; use at least "
                         f"{min_per_class * len(codes) * 2}")
    floor: set[str] = set()
    while True:
        free = [c for c in codes if c not in floor]
        budget = n - min_per_class * len(floor)
        weight = sum(weights[c] for c in free)
        raw = {c: budget * weights[c] / weight for c in free}
        low = {c for c, v in raw.items() if v < min_per_class}
        if not low:
            break
        floor |= low
    counts = {c: min_per_class for c in floor} | {c: int(v) for c, v in raw.items()}
    for c in sorted(raw, key=lambda c: raw[c] - int(raw[c]), reverse=True)[: n - sum(counts.values())]:
        counts[c] += 1
    return {c: counts[c] for c in codes}


def class_weights(descriptor: "DatasetDescriptor", label_set: LabelSet,
                  options: Mapping[str, str] | None = None) -> dict[str, float]:
    """The dataset's published images per class (equal weights where it has none; a class it
    does not count gets the mean of the others)."""
    counts = {k: float(v) for k, v in descriptor.counts(options).items() if k in label_set and v > 0}
    fill = float(np.mean(list(counts.values()))) if counts else 1.0
    return {c: counts.get(c, fill) for c in label_set.codes}


def generic_style(index: int, count: int) -> dict[str, Any]:
    """A class's appearance from its index: a hue of its own (golden-ratio steps around the
    colour circle), saturation and brightness, size, border irregularity, edge blur and one of
    the seven textures; distinct for any number of classes."""
    golden = 0.6180339887
    hue = (index * golden) % 1.0
    sat = 0.35 + 0.5 * ((index * 0.3819 + 0.17) % 1.0)
    val = 0.22 + 0.6 * ((index * 0.7071 + 0.41) % 1.0)
    rgb = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, sat, val))
    return {"rgb": rgb, "radius": 0.15 + 0.18 * ((index * 0.4142 + 0.3) % 1.0),
            "irregular": 0.04 + 0.28 * ((index * 0.2718 + 0.55) % 1.0), "blur": 2 + (index * 3) % 5,
            "texture": TEXTURES[index % len(TEXTURES)]}


def styles_for(label_set: LabelSet, profile: SynthProfile) -> dict[str, dict[str, Any]]:
    return {code: dict(profile.styles.get(code) or generic_style(k, len(label_set)))
            for k, code in enumerate(label_set.codes)}


# ---------------------------------------------------------------- the rows

def _group_sizes(n_images: int, rng: np.random.Generator) -> list[int]:
    """Images per group summing to ``n_images``: mostly 1, often 2-3, sometimes up to 6
    (HAM10000 averages 1.34 images per lesion)."""
    sizes: list[int] = []
    left = n_images
    while left > 0:
        k = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.72, 0.16, 0.07, 0.03, 0.01, 0.01]))
        k = min(k, left)
        sizes.append(k)
        left -= k
    return sizes


def draw(descriptor: "DatasetDescriptor", n: int, seed: int, options: Mapping[str, str] | None = None,
         min_per_class: int = MIN_PER_CLASS) -> pd.DataFrame:
    """The rows of a synthetic set for ``descriptor`` (rows in a shuffled order, like a real
    export): the columns of :data:`DRAW_COLUMNS`, the profile's extra columns, ``split`` for a
    dataset with an official split, and ``draw_as`` (the class a lesion is drawn as),
    ``lesion_seed`` and ``image_seed``, which drive the drawing."""
    opts = descriptor.resolve_options(options)
    label_set = descriptor.label_set(opts)
    profile = profile_of(descriptor)
    codes = list(label_set.codes)
    rng = np.random.default_rng([seed, 1])
    counts = class_counts(n, class_weights(descriptor, label_set, opts), min_per_class)
    group_numbers = rng.choice(np.arange(10_000, 9_999_999), size=n, replace=False)
    image_numbers = rng.choice(np.arange(10_000, 9_999_999), size=n, replace=False)
    grouping = descriptor.grouping
    group_format = profile.group_id or (f"{grouping.upper()}_{{:07d}}" if grouping else "")
    p_sites = _SITE_P / _SITE_P.sum()
    rows = []
    group_k = 0
    for label in codes:
        sizes = _group_sizes(counts[label], rng) if grouping else [1] * counts[label]
        for size in sizes:
            group_id = group_format.format(group_numbers[group_k]) if grouping else ""
            group_k += 1
            appearance = label
            if rng.random() < ATYPICAL_RATE:
                appearance = str(rng.choice([c for c in codes if c != label]))
            extra = {}
            for column, table in profile.extra.items():
                values, probs = zip(*table[label])
                extra[column] = str(rng.choice(values, p=probs))
            mu, sd = profile.age.get(label, _DEFAULT_AGE)
            age = "" if rng.random() < 0.006 else f"{float(np.clip(round(rng.normal(mu, sd) / 5) * 5, 0, 85)):.1f}"
            sex = "unknown" if rng.random() < 0.005 else str(rng.choice(["male", "female"], p=[0.54, 0.46]))
            site = str(rng.choice(_SITES, p=p_sites))
            lesion_seed = int(rng.integers(2**31))
            for _ in range(size):
                rows.append(dict(group_id=group_id, image_id="", dx=label, **extra, age=age, sex=sex, site=site,
                                 draw_as=appearance, lesion_seed=lesion_seed))
    frame = pd.DataFrame(rows).iloc[rng.permutation(len(rows))].reset_index(drop=True)
    frame["image_id"] = [profile.image_id.format(k) for k in image_numbers[: len(frame)]]
    frame["image_seed"] = rng.integers(2**31, size=len(frame))
    if not grouping:
        frame["group_id"] = frame["image_id"]  # each image its own group
    # what HAM10000's original generator did not draw comes from a second stream, so its
    # rows (and images) stay exactly as they were
    extra_rng = np.random.default_rng([seed, 2])
    per_group = frame.drop_duplicates("group_id")["group_id"]
    skin = dict(zip(per_group, (str(k) for k in extra_rng.choice(np.arange(1, 7), size=len(per_group), p=_SKIN_P))))
    frame["skin_type"] = frame["group_id"].map(skin)
    if descriptor.split_policy == "official":
        from .splits import grouped_split

        frame["split"] = grouped_split(frame, (0.7, 0.1, 0.2), seed=seed).to_numpy()
    return frame


def draws_for_writer(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns a synthetic writer receives (the drawing's own columns left out)."""
    return frame.drop(columns=["draw_as", "lesion_seed", "image_seed"]).copy()


# ---------------------------------------------------------------- the images

def draw_lesion(style: Mapping[str, Any], lesion_seed: int, image_seed: int, modality: str = "dermoscopic",
                skin_type: int | None = None) -> "Image.Image":
    """One 600x450 RGB drawing of a lesion with appearance ``style`` (see :class:`SynthProfile`).

    Lesion-level traits (shape, colour, texture layout) come from ``lesion_seed``, so the images
    of one lesion look alike; view-level changes (rotation, zoom, lighting, noise) from
    ``image_seed``. ``skin_type`` (Fitzpatrick 1-6) sets the skin's brightness where given;
    ``modality`` ``clinical`` draws a smaller lesion on a photo-like background.
    """
    from PIL import Image, ImageDraw, ImageFilter

    # drawn at half size and enlarged at the end: 4x less pixel work, and real dermoscopy is
    # smooth at the pixel level anyway
    W, H, px = WIDTH // 2, HEIGHT // 2, 0.5
    clinical = modality == "clinical"
    lr = np.random.default_rng(lesion_seed)
    vr = np.random.default_rng(image_seed)

    # skin: a random tone with smooth blotchy variation, lighting gradient and a dermoscope vignette
    factor = lr.uniform(0.78, 1.05)
    if skin_type is not None:
        factor = _SKIN_FACTOR[int(skin_type) - 1] * (0.92 + 0.16 * (factor - 0.78) / 0.27)
    tone = np.array([222, 178, 150]) * factor + lr.normal(0, 6, 3)
    small = tone + vr.normal(0, 7, (9, 12, 3))
    skin = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((W, H), Image.BICUBIC)

    colour = np.clip(np.array(style["rgb"]) + lr.normal(0, 10, 3), 0, 255)
    radius = H * style["radius"] * lr.uniform(0.75, 1.25) * vr.uniform(0.9, 1.1)
    cx = W / 2 + vr.normal(0, 25 * px)
    cy = H / 2 + vr.normal(0, 20 * px)
    if clinical:  # a photograph: the lesion is smaller and off centre
        radius *= 0.7
        cx += vr.normal(0, 20 * px)
        cy += vr.normal(0, 15 * px)
    rot = vr.uniform(0, 2 * np.pi)

    # border: a radius modulated by a few random harmonics; amplitude = irregularity
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    wobble = np.zeros_like(theta)
    for k in (2, 3, 5, 7):
        wobble += lr.normal(0, style["irregular"] / np.sqrt(k)) * np.cos(k * theta + lr.uniform(0, 2 * np.pi))
    elong = lr.uniform(0.75, 1.0)
    rr = radius * np.clip(1 + wobble, 0.45, 1.8)
    xs = cx + rr * np.cos(theta + rot)
    ys = cy + rr * np.sin(theta + rot) * elong
    # the mask is drawn and blurred at half of that size, then enlarged: the blur dominated the cost
    q = 2
    mask = Image.new("L", (W // q, H // q + 1), 0)
    mdraw = ImageDraw.Draw(mask)
    if style["texture"] == "lobules":  # vascular lesions: a cluster of round lobules
        for _ in range(int(lr.integers(3, 6))):
            ox, oy = lr.normal(0, radius * 0.45, 2)
            r = radius * lr.uniform(0.4, 0.65)
            mdraw.ellipse([(cx + ox - r) / q, (cy + oy - r) / q, (cx + ox + r) / q, (cy + oy + r) / q], fill=255)
    else:
        mdraw.polygon(list(zip((xs / q).tolist(), (ys / q).tolist())), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(max(0.6, style["blur"] * px * vr.uniform(0.8, 1.3) / q)))
    mask = mask.resize((W, H), Image.BILINEAR)

    lesion = Image.new("RGB", (W, H), tuple(int(c) for c in colour))
    ldraw = ImageDraw.Draw(lesion)
    _texture(ldraw, style["texture"], colour, cx, cy, radius, lr, px)

    img = Image.composite(lesion, skin, mask)
    if clinical:
        img = _photo_background(img, vr, W, H)
    arr = np.asarray(img, dtype=np.float32)
    # lighting gradient, vignette and sensor noise: the same for every class
    yy, xx = np.mgrid[0:H:4, 0:W:4].astype(np.float32)
    light = 1 + vr.uniform(-0.12, 0.12) * (xx / W - 0.5) + vr.uniform(-0.12, 0.12) * (yy / H - 0.5)
    if not clinical:  # the dermoscope's round field
        dist = np.hypot(xx - W / 2, yy - H / 2) / (W / 2)
        light = light * np.clip(1.25 - 0.55 * dist**2, 0.2, 1)
    light = np.asarray(Image.fromarray((light * 100).astype(np.uint8)).resize((W, H), Image.BILINEAR),
                       dtype=np.float32) * np.float32(0.01)
    gain = vr.uniform(0.88, 1.12, 3).astype(np.float32)
    oy, ox = int(vr.integers(0, 64)), int(vr.integers(0, 64))
    noise = _noise_tile()[oy:oy + H, ox:ox + W]
    out = arr * light[..., None] * gain + noise
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BILINEAR)


def _photo_background(img: "Image.Image", rng: np.random.Generator, W: int, H: int) -> "Image.Image":
    """A clinical photograph's surroundings: the skin fills a curved region and a backdrop
    (cloth, wall: a muted colour with a soft gradient) the rest."""
    from PIL import Image, ImageDraw, ImageFilter

    backdrop = np.array([rng.uniform(40, 200), rng.uniform(40, 200), rng.uniform(40, 200)])
    backdrop = 0.5 * backdrop + 0.5 * backdrop.mean()  # muted
    grad = np.linspace(0.8, 1.15, W, dtype=np.float32)[None, :, None] * rng.uniform(0.9, 1.1)
    back = Image.fromarray(np.clip(np.broadcast_to(backdrop, (H, W, 3)) * grad, 0, 255).astype(np.uint8))
    # the skin region: everything on one side of a wavy line across a corner
    side = int(rng.integers(4))
    t = np.linspace(0, 1, 24)
    depth = rng.uniform(0.08, 0.22)
    wave = depth + 0.04 * np.sin(2 * np.pi * (t * rng.uniform(0.5, 1.5) + rng.uniform(0, 1)))
    if side == 0:  # backdrop at the top
        edge = [(x * W, y * H) for x, y in zip(t, wave)] + [(W, 0), (0, 0)]
    elif side == 1:  # bottom
        edge = [(x * W, (1 - y) * H) for x, y in zip(t, wave)] + [(W, H), (0, H)]
    elif side == 2:  # left
        edge = [(y * W, x * H) for x, y in zip(t, wave)] + [(0, H), (0, 0)]
    else:  # right
        edge = [((1 - y) * W, x * H) for x, y in zip(t, wave)] + [(W, H), (W, 0)]
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).polygon(edge, fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(2))
    return Image.composite(back, img, mask)


_NOISE: np.ndarray | None = None


def _noise_tile() -> np.ndarray:
    """A fixed sensor-noise tile (cropped at a per-image offset): drawing fresh noise for every
    600x450 image would dominate the generation time."""
    global _NOISE
    if _NOISE is None:
        _NOISE = np.random.default_rng(12345).integers(-14, 15, (HEIGHT + 64, WIDTH + 64, 3)).astype(np.float32)
    return _NOISE


def _texture(draw, kind: str, colour: np.ndarray, cx: float, cy: float, radius: float,
             rng: np.random.Generator, px: float = 1.0) -> None:
    def shade(factor: float, jitter: float = 10) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.clip(colour * factor + rng.normal(0, jitter, 3), 0, 255))

    def point(spread: float = 0.8) -> tuple[float, float]:
        r = radius * spread * np.sqrt(rng.random())
        a = rng.uniform(0, 2 * np.pi)
        return cx + r * np.cos(a), cy + r * np.sin(a)

    if kind == "blotches":  # several colours (black, blue-grey, red-brown) in patches
        for _ in range(int(rng.integers(4, 9))):
            x, y = point()
            r = radius * rng.uniform(0.15, 0.4)
            fill = [(25, 20, 22), (90, 100, 125), (120, 60, 45), (150, 110, 90)][int(rng.integers(4))]
            draw.ellipse([x - r, y - r * rng.uniform(0.5, 1), x + r, y + r], fill=fill)
    elif kind == "network":  # a faint darker pigment network
        step = radius / rng.uniform(3, 5)
        dark = shade(0.7, 4)
        for off in np.arange(-radius, radius, step):
            draw.line([cx + off, cy - radius, cx + off, cy + radius], fill=dark, width=max(1, round(2 * px)))
            draw.line([cx - radius, cy + off, cx + radius, cy + off], fill=dark, width=max(1, round(2 * px)))
    elif kind == "crypts":  # light milia-like dots and dark comedo openings
        for _ in range(int(rng.integers(15, 35))):
            x, y = point(0.85)
            r = rng.uniform(3, 8) * px
            fill = (235, 225, 200) if rng.random() < 0.6 else shade(0.45)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif kind == "vessels":  # branching red arborising vessels
        for _ in range(int(rng.integers(3, 6))):
            x, y = point(0.5)
            a = rng.uniform(0, 2 * np.pi)
            for _ in range(int(rng.integers(4, 8))):
                length = radius * rng.uniform(0.12, 0.3)
                nx, ny = x + length * np.cos(a), y + length * np.sin(a)
                draw.line([x, y, nx, ny], fill=(170, 20, 30), width=max(1, round(int(rng.integers(2, 5)) * px)))
                x, y, a = nx, ny, a + rng.normal(0, 0.7)
    elif kind == "scale":  # white scale speckles
        for _ in range(int(rng.integers(60, 120))):
            x, y = point(0.95)
            r = rng.uniform(1.5, 4) * px
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(240, 236, 230))
    elif kind == "white_centre":  # a central white scar-like patch
        r = radius * rng.uniform(0.35, 0.55)
        draw.ellipse([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], fill=(238, 226, 214))
    elif kind == "lobules":  # darker red-purple lacunae
        for _ in range(int(rng.integers(5, 12))):
            x, y = point(0.7)
            r = radius * rng.uniform(0.08, 0.2)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=shade(0.55, 6))
    else:
        raise ValueError(f"synthetic style: unknown texture {kind!r}; use one of {', '.join(TEXTURES)}")


# one job: (path, style, lesion seed, image seed, modality, skin type or None)
_Job = tuple[str, dict, int, int, str, "int | None"]


def _draw_and_save(jobs: list[_Job]) -> None:
    for path, style, lesion_seed, image_seed, modality, skin_type in jobs:
        img = draw_lesion(style, lesion_seed, image_seed, modality, skin_type)
        with atomic_path(path) as tmp:
            if path.lower().endswith(".png"):
                img.save(tmp, format="PNG", compress_level=1)
            else:
                img.save(tmp, format="JPEG", quality=90)


def _render(jobs: list[_Job], workers: int | None, progress: bool) -> None:
    workers = workers or min(4, os.cpu_count() or 1)
    chunks = [jobs[i:i + 50] for i in range(0, len(jobs), 50)]
    from ..progress import progress as tqdm  # tqdm on a terminal, whole lines in a log file

    bar = tqdm(total=len(jobs), desc="drawing synthetic images", disable=not progress, leave=False)
    if workers <= 1 or len(jobs) <= 100:
        for chunk in chunks:
            _draw_and_save(chunk)
            bar.update(len(chunk))
    else:
        from .resize import worker_pool

        try:
            with worker_pool(workers) as pool:  # its workers exit if this process dies
                for chunk, _ in zip(chunks, pool.map(_draw_and_save, chunks)):
                    bar.update(len(chunk))
        except BrokenProcessPool:  # workers could not start (e.g. a script read from stdin)
            bar.reset()
            for chunk in chunks:  # drawing is deterministic: redo everything in this process
                _draw_and_save(chunk)
                bar.update(len(chunk))
    bar.close()


# ---------------------------------------------------------------- the marker

def read_marker(root: str | os.PathLike) -> dict | None:
    """What a synthetic raw folder says about itself (its :data:`MARKER`), or None for real data.
    A folder drawn before the marker existed (HAM10000 layout, derma's README) counts too."""
    root = Path(root)
    path = root / MARKER
    if path.is_file():
        try:
            marker = json.loads(path.read_text())
        except (ValueError, OSError):
            raise ValueError(f"{path}: not valid JSON; delete the folder and draw it again with `derma synth`") from None
        if isinstance(marker, dict) and marker.get("dataset"):
            return marker
        raise ValueError(f"{path}: no 'dataset' in the synthetic marker; draw the folder again with `derma synth`")
    readme = root / "README.txt"
    if readme.is_file() and (root / "HAM10000_metadata.csv").is_file():
        with open(readme, errors="replace") as f:
            head = f.read(200)
        if head.startswith("SYNTHETIC data drawn by derma (generator v"):
            return {"dataset": "ham10000", "legacy": True, "note": head.splitlines()[0]}
    return None


def _write_marker(folder: Path, descriptor: "DatasetDescriptor", n: int, seed: int, options: dict) -> None:
    (folder / MARKER).write_text(json.dumps({
        "dataset": descriptor.name, "generator_version": GENERATOR_VERSION, "n": n, "seed": seed, "options": options,
        "note": "SYNTHETIC data drawn by derma: not medical images"}, indent=2) + "\n")


# ---------------------------------------------------------------- generate

def _descriptor(dataset: "DatasetDescriptor | str | None") -> "DatasetDescriptor":
    from .descriptor import DatasetDescriptor

    if isinstance(dataset, DatasetDescriptor):
        return dataset
    from .sources import registered_descriptor

    name = dataset or "ham10000"
    found = registered_descriptor(name)
    if found is None:
        raise ValueError(f"unknown dataset {name!r}; `derma datasets` lists them")
    return found


def generate(out: str | os.PathLike, n: int = 1500, seed: int = 0, workers: int | None = None,
             progress: bool = False, dataset: "DatasetDescriptor | str | None" = None,
             options: Mapping[str, str] | None = None) -> Path:
    """Write a synthetic set of ``n`` images in ``dataset``'s raw layout (HAM10000's by default)
    into ``out``; returns ``out``.

    Deterministic in ``(dataset, options, n, seed)``; the folder is built under a temporary name
    and renamed into place, so a reader never sees half a set. An existing complete set is left
    untouched.
    """
    descriptor = _descriptor(dataset)
    if descriptor.synth_writer is None:
        raise ValueError(f"dataset {descriptor.name} has no synthetic writer, so it cannot be imitated; "
                         "`derma datasets` lists the datasets that can")
    opts = descriptor.resolve_options(options)
    out = Path(out)
    marker = read_marker(out) if out.is_dir() else None
    if marker is not None:
        if marker.get("dataset") != descriptor.name:
            raise ValueError(f"{out} already holds a synthetic {marker.get('dataset')} set; choose another folder")
        if marker.get("legacy"):  # drawn before markers existed: the same files, now marked
            _write_marker(out, descriptor, n, seed, opts)
        return out
    frame = draw(descriptor, n, seed, opts)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    paths = [Path(p) for p in descriptor.synth_writer(tmp, draws_for_writer(frame), opts)]
    if len(paths) != len(frame):
        raise ValueError(f"dataset {descriptor.name}: its synthetic writer returned {len(paths)} image paths for "
                         f"{len(frame)} rows; it must return one per row")
    root = tmp.resolve()
    for path in paths:
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png") or not path.resolve().is_relative_to(root):
            raise ValueError(f"dataset {descriptor.name}: its synthetic writer returned {path}; each image path "
                             "must be a .jpg or .png under the output folder")
        path.parent.mkdir(parents=True, exist_ok=True)
    label_set = descriptor.label_set(opts)
    styles = styles_for(label_set, profile_of(descriptor))
    use_skin = not profile_of(descriptor).tone_from_lesion
    jobs = [(str(path), styles[row.draw_as], int(row.lesion_seed), int(row.image_seed), descriptor.modality,
             int(row.skin_type) if use_skin else None) for path, row in zip(paths, frame.itertuples())]
    _render(jobs, workers, progress)
    (tmp / "README.txt").write_text(
        f"SYNTHETIC data drawn by derma (generator v{GENERATOR_VERSION}, n={n}, seed={seed}).\n"
        f"Not medical images. Same layout as {descriptor.title} so every derma command can run on it.\n")
    _write_marker(tmp, descriptor, n, seed, opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first, or the folder is not empty
        if read_marker(out) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError(f"{out} is not empty; choose an empty folder for the synthetic set") from None
    return out


def build_metadata(n: int, seed: int) -> pd.DataFrame:
    """The rows of the built-in synthetic HAM10000 set of ``n`` images: HAM10000's metadata
    columns (lesion_id, image_id, dx, dx_type, age, sex, localization), ``group_id`` and the
    drawing's ``draw_as``, ``lesion_seed`` and ``image_seed``."""
    from .datasets.ham10000 import DESCRIPTOR

    frame = draw(DESCRIPTOR, n, seed)
    return frame.assign(lesion_id=frame["group_id"], localization=frame["site"])
