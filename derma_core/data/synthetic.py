"""The built-in synthetic dataset: HAM10000's raw layout, drawn from scratch.

``generate(out, n, seed)`` writes ``HAM10000_metadata.csv`` (the seven HAM10000 columns) and
600x450 JPEGs split over ``HAM10000_images_part_1/`` and ``_part_2/``, with HAM10000's class
proportions and several images per lesion. Each class differs in ways a CNN can learn (lesion
colour, size, border irregularity, texture) while per-image noise, lighting, skin tone and a
share of atypical lesions (drawn like another class) keep it from being trivially separable.

It is NOT medical data: every image is a drawing. derma labels it synthetic everywhere (dataset
name ``synthetic``, MLflow tag ``derma.synthetic=true``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pandas as pd

from ..labels import LABELS

#: Bump when the drawing changes, so cached synthetic sets are regenerated.
GENERATOR_VERSION = 2

#: Image counts of the real HAM10000 per class: the synthetic set keeps these proportions.
HAM10000_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}

WIDTH, HEIGHT = 600, 450
METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")

#: Share of lesions drawn with another class's appearance (keeps accuracy below 100%).
ATYPICAL_RATE = 0.08

# Per-class appearance: lesion RGB, radius (fraction of the image height), border
# irregularity, edge blur (px) and a texture kind. Colours are jittered per lesion, so neighbours
# (nv/df/bkl, akiec/bcc) overlap a little.
_STYLE = {
    "akiec": dict(rgb=(200, 82, 72), radius=0.25, irregular=0.20, blur=6, texture="scale"),
    "bcc": dict(rgb=(226, 160, 170), radius=0.22, irregular=0.12, blur=3, texture="vessels"),
    "bkl": dict(rgb=(190, 150, 100), radius=0.28, irregular=0.14, blur=2, texture="crypts"),
    "df": dict(rgb=(150, 96, 76), radius=0.16, irregular=0.05, blur=5, texture="white_centre"),
    "mel": dict(rgb=(48, 32, 30), radius=0.32, irregular=0.32, blur=2, texture="blotches"),
    "nv": dict(rgb=(110, 70, 45), radius=0.21, irregular=0.05, blur=3, texture="network"),
    "vasc": dict(rgb=(140, 22, 70), radius=0.18, irregular=0.10, blur=2, texture="lobules"),
}

_DX_TYPES = {
    "akiec": (("histo", 1.0),), "bcc": (("histo", 1.0),), "mel": (("histo", 1.0),),
    "bkl": (("histo", 0.6), ("consensus", 0.3), ("confocal", 0.1)),
    "df": (("histo", 0.5), ("consensus", 0.5)), "vasc": (("histo", 0.5), ("consensus", 0.5)),
    "nv": (("follow_up", 0.5), ("histo", 0.45), ("consensus", 0.05)),
}
_AGE = {"akiec": (67, 12), "bcc": (66, 12), "bkl": (60, 15), "df": (50, 15), "mel": (60, 15),
        "nv": (42, 16), "vasc": (50, 20)}
_SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "foot",
          "unknown", "neck", "scalp", "hand", "ear", "genital", "acral")
_SITE_P = np.array([22, 21, 14, 11, 10, 7, 4, 3, 2, 2, 1.3, 1, 0.6, 0.5, 0.1])


def class_counts(n: int, min_per_class: int = 12) -> dict[str, int]:
    """Images per class for a set of ``n``: HAM10000's proportions (largest remainder), with at
    least ``min_per_class`` images of every class so each one reaches every split; the classes
    above the minimum share the rest in HAM10000's proportions."""
    if n < min_per_class * len(LABELS) * 2:
        raise ValueError(f"synthetic set: n={n} is too small; use at least {min_per_class * len(LABELS) * 2}")
    floor = set()
    while True:
        free = [c for c in LABELS if c not in floor]
        budget = n - min_per_class * len(floor)
        weight = sum(HAM10000_COUNTS[c] for c in free)
        raw = {c: budget * HAM10000_COUNTS[c] / weight for c in free}
        low = {c for c, v in raw.items() if v < min_per_class}
        if not low:
            break
        floor |= low
    counts = {c: min_per_class for c in floor} | {c: int(v) for c, v in raw.items()}
    for c in sorted(raw, key=lambda c: raw[c] - int(raw[c]), reverse=True)[: n - sum(counts.values())]:
        counts[c] += 1
    return {c: counts[c] for c in LABELS}


def _lesion_sizes(n_images: int, rng: np.random.Generator) -> list[int]:
    """Images per lesion summing to ``n_images``: mostly 1, often 2-3, sometimes up to 6
    (HAM10000 averages 1.34 images per lesion)."""
    sizes: list[int] = []
    left = n_images
    while left > 0:
        k = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.72, 0.16, 0.07, 0.03, 0.01, 0.01]))
        k = min(k, left)
        sizes.append(k)
        left -= k
    return sizes


def build_metadata(n: int, seed: int) -> pd.DataFrame:
    """The metadata table of a synthetic set (rows in a shuffled order, like a real export).

    Extra columns ``draw_as`` (the class the lesion is drawn as), ``lesion_seed`` and ``image_seed``
    drive the drawing; they are not written to the CSV.
    """
    rng = np.random.default_rng([seed, 1])
    counts = class_counts(n)
    lesion_numbers = rng.choice(np.arange(10_000, 9_999_999), size=n, replace=False)
    image_numbers = rng.choice(np.arange(10_000, 9_999_999), size=n, replace=False)
    rows = []
    lesion_k = 0
    for label in LABELS:
        for size in _lesion_sizes(counts[label], rng):
            lesion_id = f"HAM_{lesion_numbers[lesion_k]:07d}"
            lesion_k += 1
            appearance = label
            if rng.random() < ATYPICAL_RATE:
                appearance = str(rng.choice([c for c in LABELS if c != label]))
            types, probs = zip(*_DX_TYPES[label])
            dx_type = str(rng.choice(types, p=probs))
            mu, sd = _AGE[label]
            age = "" if rng.random() < 0.006 else f"{float(np.clip(round(rng.normal(mu, sd) / 5) * 5, 0, 85)):.1f}"
            sex = "unknown" if rng.random() < 0.005 else str(rng.choice(["male", "female"], p=[0.54, 0.46]))
            site = str(rng.choice(_SITES, p=_SITE_P / _SITE_P.sum()))
            lesion_seed = int(rng.integers(2**31))
            for _ in range(size):
                rows.append(dict(lesion_id=lesion_id, image_id="", dx=label, dx_type=dx_type, age=age,
                                 sex=sex, localization=site, draw_as=appearance, lesion_seed=lesion_seed))
    frame = pd.DataFrame(rows).iloc[rng.permutation(len(rows))].reset_index(drop=True)
    frame["image_id"] = [f"ISIC_{k:07d}" for k in image_numbers[: len(frame)]]
    frame["image_seed"] = rng.integers(2**31, size=len(frame))
    return frame


def draw_lesion(appearance: str, lesion_seed: int, image_seed: int) -> "Image.Image":
    """One 600x450 RGB drawing of a lesion of class ``appearance``.

    Lesion-level traits (shape, colour, texture layout) come from ``lesion_seed``, so the images
    of one lesion look alike; view-level changes (rotation, zoom, lighting, noise) from ``image_seed``.
    """
    from PIL import Image, ImageDraw, ImageFilter

    # drawn at half size and enlarged at the end: 4x less pixel work, and real dermoscopy is
    # smooth at the pixel level anyway
    W, H, px = WIDTH // 2, HEIGHT // 2, 0.5
    style = _STYLE[appearance]
    lr = np.random.default_rng(lesion_seed)
    vr = np.random.default_rng(image_seed)

    # skin: a random tone with smooth blotchy variation, lighting gradient and a dermoscope vignette
    tone = np.array([222, 178, 150]) * lr.uniform(0.78, 1.05) + lr.normal(0, 6, 3)
    small = tone + vr.normal(0, 7, (9, 12, 3))
    skin = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((W, H), Image.BICUBIC)

    colour = np.clip(np.array(style["rgb"]) + lr.normal(0, 10, 3), 0, 255)
    radius = H * style["radius"] * lr.uniform(0.75, 1.25) * vr.uniform(0.9, 1.1)
    cx = W / 2 + vr.normal(0, 25 * px)
    cy = H / 2 + vr.normal(0, 20 * px)
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
    arr = np.asarray(img, dtype=np.float32)
    # lighting gradient, vignette and sensor noise: the same for every class
    yy, xx = np.mgrid[0:H:4, 0:W:4].astype(np.float32)
    light = 1 + vr.uniform(-0.12, 0.12) * (xx / W - 0.5) + vr.uniform(-0.12, 0.12) * (yy / H - 0.5)
    dist = np.hypot(xx - W / 2, yy - H / 2) / (W / 2)
    light = light * np.clip(1.25 - 0.55 * dist**2, 0.2, 1)
    light = np.asarray(Image.fromarray((light * 100).astype(np.uint8)).resize((W, H), Image.BILINEAR),
                       dtype=np.float32) * np.float32(0.01)
    gain = vr.uniform(0.88, 1.12, 3).astype(np.float32)
    oy, ox = int(vr.integers(0, 64)), int(vr.integers(0, 64))
    noise = _noise_tile()[oy:oy + H, ox:ox + W]
    out = arr * light[..., None] * gain + noise
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BILINEAR)


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

    if kind == "blotches":  # melanoma: several colours (black, blue-grey, red-brown) in patches
        for _ in range(int(rng.integers(4, 9))):
            x, y = point()
            r = radius * rng.uniform(0.15, 0.4)
            fill = [(25, 20, 22), (90, 100, 125), (120, 60, 45), (150, 110, 90)][int(rng.integers(4))]
            draw.ellipse([x - r, y - r * rng.uniform(0.5, 1), x + r, y + r], fill=fill)
    elif kind == "network":  # naevus: a faint darker pigment network
        step = radius / rng.uniform(3, 5)
        dark = shade(0.7, 4)
        for off in np.arange(-radius, radius, step):
            draw.line([cx + off, cy - radius, cx + off, cy + radius], fill=dark, width=max(1, round(2 * px)))
            draw.line([cx - radius, cy + off, cx + radius, cy + off], fill=dark, width=max(1, round(2 * px)))
    elif kind == "crypts":  # seborrhoeic keratosis: light milia-like dots and dark comedo openings
        for _ in range(int(rng.integers(15, 35))):
            x, y = point(0.85)
            r = rng.uniform(3, 8) * px
            fill = (235, 225, 200) if rng.random() < 0.6 else shade(0.45)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif kind == "vessels":  # basal cell carcinoma: branching red arborising vessels
        for _ in range(int(rng.integers(3, 6))):
            x, y = point(0.5)
            a = rng.uniform(0, 2 * np.pi)
            for _ in range(int(rng.integers(4, 8))):
                length = radius * rng.uniform(0.12, 0.3)
                nx, ny = x + length * np.cos(a), y + length * np.sin(a)
                draw.line([x, y, nx, ny], fill=(170, 20, 30), width=max(1, round(int(rng.integers(2, 5)) * px)))
                x, y, a = nx, ny, a + rng.normal(0, 0.7)
    elif kind == "scale":  # actinic keratosis: white scale speckles on a red base
        for _ in range(int(rng.integers(60, 120))):
            x, y = point(0.95)
            r = rng.uniform(1.5, 4) * px
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(240, 236, 230))
    elif kind == "white_centre":  # dermatofibroma: a central white scar-like patch
        r = radius * rng.uniform(0.35, 0.55)
        draw.ellipse([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], fill=(238, 226, 214))
    elif kind == "lobules":  # vascular: darker red-purple lacunae
        for _ in range(int(rng.integers(5, 12))):
            x, y = point(0.7)
            r = radius * rng.uniform(0.08, 0.2)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=shade(0.55, 6))


def _draw_and_save(jobs: list[tuple[str, str, int, int]]) -> None:
    for path, appearance, lesion_seed, image_seed in jobs:
        img = draw_lesion(appearance, lesion_seed, image_seed)
        tmp = f"{path}.tmp"
        img.save(tmp, format="JPEG", quality=90)
        os.replace(tmp, path)


def generate(out: str | os.PathLike, n: int = 1500, seed: int = 0, workers: int | None = None,
             progress: bool = False) -> Path:
    """Write a synthetic HAM10000-layout set of ``n`` images into ``out``; returns ``out``.

    Deterministic in ``(n, seed)``; the folder is built under a temporary name and renamed into
    place, so a reader never sees half a set. An existing complete set is left untouched.
    """
    out = Path(out)
    if (out / "HAM10000_metadata.csv").exists():
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    parts = [tmp / "HAM10000_images_part_1", tmp / "HAM10000_images_part_2"]
    for part in parts:
        part.mkdir(parents=True)
    meta = build_metadata(n, seed)
    half = (len(meta) + 1) // 2
    jobs = [(str(parts[0 if i < half else 1] / f"{row.image_id}.jpg"), row.draw_as,
             int(row.lesion_seed), int(row.image_seed)) for i, row in enumerate(meta.itertuples())]
    workers = workers or min(4, os.cpu_count() or 1)
    chunks = [jobs[i:i + 50] for i in range(0, len(jobs), 50)]
    from tqdm.auto import tqdm

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
    meta[list(METADATA_COLUMNS)].to_csv(tmp / "HAM10000_metadata.csv", index=False)
    (tmp / "README.txt").write_text(
        f"SYNTHETIC data drawn by derma (generator v{GENERATOR_VERSION}, n={n}, seed={seed}).\n"
        "Not medical images. Same layout as HAM10000 so every derma command can run on it.\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first
        if (out / "HAM10000_metadata.csv").exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    return out


def generator_digest(n: int, seed: int) -> str:
    """Identifies a synthetic set: same digest, same files."""
    return hashlib.sha256(f"synthetic-v{GENERATOR_VERSION}-n{n}-s{seed}".encode()).hexdigest()
