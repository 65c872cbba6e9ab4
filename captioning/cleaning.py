"""Per-image checks for cleaning a captioning dataset, run in a process pool and cached so a
killed run resumes where it stopped.

Each image is decoded once (data.load_image) and gets:
  status   "ok", "corrupt" (cannot be decoded) or "blank" (near-constant: luminance std < 3 of 255)
  phash    64-bit perceptual hash (imagehash) and an 8x8 colour thumbnail, for duplicate groups
  ocr      per OCR view, the words tesseract reads with its own confidences (its TSV output)

Text rule (TextRule). Tesseract reads three views of every image (VIEWS): the greyscale image,
a mask of its near-white pixels and a mask of its near-black pixels (lettering over a photo is
lost by one global threshold; a mask keeps it). Only confident word-like runs count: runs of 3+
ASCII letters inside tokens with confidence >= MIN_CONFIDENCE (70; tesseract glues words, so
"Holiday.Cookies" gives two runs). An image is text when the view that reads most holds at
least CHAR_THRESHOLD (10) such letters. Counting raw characters instead flags photos of food:
on photos tesseract "reads" texture as short tokens ("aN", "Vay", "=", "ag", "Re").
Views, page modes and thresholds were chosen on images anyone can regenerate
(rule_examples below; `python bench/bench_ocr.py --rule` prints the figures):
  - 20 photos shipped with scikit-image (astronaut, chelsea, coffee, rocket, camera, horse, cat,
    gravel, ...) at 512 px and at 274 px (the Kaggle photos' width): 0 of 40 flagged, and no
    photo scores a single letter (the sparse-text mode --psm 11 scored up to 3 on them).
  - skimage.data.page() (a printed page): flagged, 142 letters.
  - headlines rendered over 6 of those photos (8-11% of the width high, at 512 and 274 px):
    38 of 72 flagged: black words in a white box 12/12, white words in a red box 10/12, plain
    white words 6/12, white with a black outline 6/12, yellow with an outline 2/12, plain black
    words 2/12. Tesseract's layout analysis is built for documents: words in a box or on a flat
    area (covers, adverts, labels) are caught, loose lettering over a busy photo often is not.
  - the synthetic dataset's cookbook cover (zz-cookbook-cover): flagged.
  Other settings tried on the same images (none flagged a photo), headlines caught of 72: the
  grey view alone in sparse mode (--psm 11), confidence 80: 16; grey (--psm 11) + white mask,
  confidence 80: 35; the chosen views with confidence 80: 35.

Cache: one JSON line per image in a file the caller names, keyed by the image's resolved path,
size and mtime, the check settings and the tesseract version. Lines are appended (and flushed)
as batches finish; a line cut short by a kill is ignored on the next run.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .config import UserError
from .data import ImageError, load_image, log

VERSION = 1
# What tesseract reads, and in which page-segmentation mode (see the module docstring):
#   grey  the greyscale image (tesseract's own Otsu threshold), --psm 3 (automatic layout)
#   light black-on-white mask of near-white pixels (white lettering), --psm 6 (one block of text)
#   dark  black-on-white mask of near-black pixels (black lettering), --psm 3
VIEWS = (("grey", "3"), ("light", "6"), ("dark", "3"))
LIGHT_LEVEL, DARK_LEVEL = 215, 45  # luminance thresholds of the two masks
BLANK_STD = 3.0  # luminance standard deviation (0-255) below which an image is blank
MAX_OCR_SIDE = 2000  # larger images are shrunk before OCR (headline text survives)
MIN_CONFIDENCE = 70.0
CHAR_THRESHOLD = 10
_RUN = re.compile(r"[A-Za-z]{3,}")


@dataclass(frozen=True)
class TextRule:
    """When an image counts as text (see the module docstring for how the defaults were chosen)."""

    min_confidence: float = MIN_CONFIDENCE
    char_threshold: int = CHAR_THRESHOLD

    def words(self, ocr: dict | None) -> list[str]:
        """Confident word-like runs of the view that reads most: ocr = {view: [(text, confidence)]}."""
        found = [[w for text, conf in toks if conf >= self.min_confidence for w in _RUN.findall(text)]
                 for toks in (ocr or {}).values()]
        return max(found, key=lambda ws: sum(map(len, ws)), default=[])

    def score(self, ocr: dict | None) -> int:
        return sum(map(len, self.words(ocr)))

    def is_text(self, ocr: dict | None) -> bool:
        return self.score(ocr) >= self.char_threshold


# ------------------------------------------------------------------------------------ one image
def tesseract_version() -> str:
    """The tesseract version, or a UserError saying how to install it."""
    exe = shutil.which("tesseract")
    if not exe:
        raise UserError("tesseract is not installed (Debian/Ubuntu: sudo apt-get install tesseract-ocr); "
                        "install it or pass --no-ocr.")
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"{exe} does not run ({type(e).__name__}); reinstall tesseract-ocr or pass --no-ocr.") from None
    return (out.stdout or out.stderr).split("\n", 1)[0].strip()


def ocr_views(im: Image.Image) -> list[tuple[str, Image.Image, str]]:
    """[(view name, image, psm)] for every entry of VIEWS."""
    grey = im.convert("L")
    if max(grey.size) > MAX_OCR_SIDE:
        grey.thumbnail((MAX_OCR_SIDE, MAX_OCR_SIDE))
    views = {"grey": grey, "light": grey.point(lambda v: 0 if v >= LIGHT_LEVEL else 255),
             "dark": grey.point(lambda v: 0 if v <= DARK_LEVEL else 255)}
    return [(name, views[name], psm) for name, psm in VIEWS]


def thumbnail(im: Image.Image) -> np.ndarray:
    """8x8 RGB box-filtered thumbnail (uint8, 192 values): confirms that two hashes are one photo."""
    return np.asarray(im.resize((8, 8), Image.Resampling.BOX), dtype=np.uint8).reshape(-1)


def inspect_image(im: Image.Image) -> dict:
    """Blank test, perceptual hash and thumbnail of a decoded image."""
    import imagehash

    std = float(np.asarray(im.convert("L").resize((64, 64)), dtype=np.float32).std())
    if std < BLANK_STD:
        return {"status": "blank", "detail": f"luminance std {std:.1f} of 255"}
    return {"status": "ok", "phash": str(imagehash.phash(im)), "thumb": thumbnail(im).tobytes().hex()}


def run_tesseract(images: list[Image.Image], psm: str = "3", timeout: float = 120) -> list[list]:
    """OCR many images in one tesseract process (a list file): tokens [(text, conf)] per image."""
    with tempfile.TemporaryDirectory(prefix="ocr-") as tmp:
        names = []
        for i, im in enumerate(images):
            names.append(os.path.join(tmp, f"{i}.pgm"))
            im.convert("L").save(names[-1])
        listing = os.path.join(tmp, "pages.txt")
        Path(listing).write_text("\n".join(names) + "\n")
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        proc = subprocess.run(["tesseract", listing, "stdout", "--psm", psm, "tsv"], capture_output=True,
                              text=True, env=env, timeout=timeout + 2 * len(images))
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else "tesseract failed")
    tokens: list[list] = [[] for _ in images]
    for row in csv.DictReader(io.StringIO(proc.stdout), delimiter="\t", quoting=csv.QUOTE_NONE):
        text, conf = (row.get("text") or "").strip(), float(row.get("conf") or -1)
        if text and conf >= 0:
            tokens[int(row["page_num"]) - 1].append([text, round(conf, 1)])
    return tokens


def check_batch(jobs: list[tuple[str, str]], ocr: bool = True) -> list[tuple[str, dict]]:
    """[(key, path)] -> [(key, result)]: decode, blank test, hash, and (for usable images) OCR."""
    results, views = {}, {}  # views: psm -> [(key, view name, image)]
    for key, path in jobs:
        try:
            im = load_image(path)
        except ImageError as e:
            results[key] = {"status": "corrupt", "detail": str(e)}
            continue
        except Exception as e:  # a decoder bug on a hostile file is still just a bad image
            results[key] = {"status": "corrupt", "detail": f"cannot decode ({type(e).__name__})"}
            continue
        results[key] = inspect_image(im)
        if ocr and results[key]["status"] == "ok":
            results[key]["ocr"] = {}
            for name, view, psm in ocr_views(im):
                views.setdefault(psm, []).append((key, name, view))
    for psm, pages in views.items():
        try:
            found = run_tesseract([im for _, _, im in pages], psm)
        except (RuntimeError, subprocess.TimeoutExpired, OSError):  # isolate the page that breaks it
            found = []
            for key, _, im in pages:
                try:
                    found += run_tesseract([im], psm)
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                    results[key]["ocr_error"] = str(e)[:120] or type(e).__name__
                    found.append([])
        for (key, name, _), toks in zip(pages, found):
            results[key]["ocr"][name] = toks
    return [(key, results[key]) for key, _ in jobs]


# ------------------------------------------------------------------------------ many images, cached
def image_key(path, settings: str) -> str:
    st = os.stat(path)
    text = f"{VERSION}\0{settings}\0{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read_cache(path: Path) -> dict:
    found = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                item = json.loads(line)
                found[item["key"]] = item["result"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # the last line of a killed run may be cut short
    return found


def _check_star(args):
    return check_batch(*args)


def check_images(paths, cache_file, workers: int = 2, batch_size: int = 16, ocr: bool = True,
                 desc: str = "checking images") -> tuple[dict, int]:
    """{path: result} for every path (results of earlier runs come from cache_file), and how
    many came from the cache. OCR and decoding run in `workers` processes."""
    version = ocr and tesseract_version()
    settings = json.dumps([version, VIEWS, LIGHT_LEVEL, DARK_LEVEL, BLANK_STD, MAX_OCR_SIDE])
    keys = {str(p): image_key(p, settings) for p in paths}
    cache_file = Path(cache_file)
    wanted = set(keys.values())
    done = {k: v for k, v in _read_cache(cache_file).items() if k in wanted}
    # rewrite the cache with only what this run can use (drops stale entries and any cut-off line)
    tmp = cache_file.with_name(cache_file.name + ".tmp")
    tmp.write_text("".join(json.dumps({"key": k, "result": r}) + "\n" for k, r in done.items()))
    os.replace(tmp, cache_file)
    todo = sorted({k: p for p, k in keys.items() if k not in done}.items(), key=lambda kp: kp[1])
    batch_size = max(1, min(batch_size, -(-len(todo) // (4 * workers))))  # >= 4 batches per worker
    batches = [(todo[i:i + batch_size], ocr) for i in range(0, len(todo), batch_size)]
    with open(cache_file, "a") as f, tqdm(total=len(todo), desc=desc, unit="img", mininterval=1) as bar:
        def keep(items):
            for key, result in items:
                done[key] = result
                if not result.get("ocr_error"):  # a failed OCR is tried again by the next run, not kept
                    f.write(json.dumps({"key": key, "result": result}) + "\n")
            f.flush()
            bar.update(len(items))

        if workers > 1 and len(batches) > 1:
            with _pool(workers) as pool:
                for items in pool.imap_unordered(_check_star, batches):
                    keep(items)
        else:
            for b in batches:
                keep(_check_star(b))
    errors = [p for p, k in keys.items() if done[k].get("ocr_error")]
    if errors:
        names = ", ".join(errors[:3]) + (", ..." if len(errors) > 3 else "")
        log(f"warning: OCR failed on {len(errors)} image(s), kept and not judged as text: {names}")
    return {p: done[k] for p, k in keys.items()}, len(keys) - len(todo)


def _pool(workers: int):
    try:
        ctx = get_context("fork")
    except ValueError:  # no fork (Windows, some macOS setups)
        ctx = get_context("spawn")
    return ctx.Pool(workers)


# ------------------------------------------------------------------------------------ duplicates
def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def duplicate_groups(items: dict, max_distance: int = 8, max_pixel_diff: float = 4.0) -> list[list]:
    """Groups (lists of keys, in input order) of near-identical images.

    items: key -> (phash hex, thumbnail hex). Two images are the same photo when their phashes
    differ in at most `max_distance` bits AND their 8x8 colour thumbnails differ by at most
    `max_pixel_diff` (mean absolute difference, 0-255). The hash alone is not enough on simple
    pictures (different synthetic dishes collide at distance 0-4); a resized or re-encoded copy
    stays within 4 bits and about 2.5 levels. Groups are closed transitively (union-find)."""
    keys = list(items)
    if len(keys) < 2:
        return []
    hashes = np.array([int(items[k][0], 16) for k in keys], dtype=np.uint64)
    thumbs = np.array([np.frombuffer(bytes.fromhex(items[k][1]), np.uint8) for k in keys], np.float32)
    parent = list(range(len(keys)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(keys), 512):
        dist = _popcount(hashes[start:start + 512, None] ^ hashes[None, :])
        for a, b in zip(*np.nonzero(dist <= max_distance)):
            i, j = start + int(a), int(b)
            if i < j and np.abs(thumbs[i] - thumbs[j]).mean() <= max_pixel_diff:
                parent[root(j)] = root(i)
    groups: dict[int, list] = {}
    for i, k in enumerate(keys):
        groups.setdefault(root(i), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


# ------------------------------------------------------------------ images that show the text rule
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse", "hubble_deep_field", "retina",
          "immunohistochemistry", "brick", "grass", "gravel", "coins", "moon", "cell", "colorwheel", "cat",
          "logo", "clock", "binary_blobs")
HEADLINES = ("Chocolate Cake", "FRESH PASTA", "Grandma's Kitchen", "Summer Salads", "Easy Dinners",
             "Bake Sale Today", "Spicy Tacos", "Holiday Cookies")
# fill, box behind the words, outline
WHITE, BLACK, YELLOW, RED = (255, 255, 255), (20, 20, 20), (250, 220, 0), (180, 30, 30)
STYLES = ((WHITE, None, None), (WHITE, None, BLACK), (BLACK, WHITE, None),
          (YELLOW, None, BLACK), (BLACK, None, None), (WHITE, RED, None))


def skimage_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled sample images as RGB (needs scikit-image, a test dependency)."""
    import skimage.data

    a = np.asarray(getattr(skimage.data, name)())
    if a.dtype != np.uint8:
        a = (a * 255 if a.max() <= 1 else a).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def fit_width(im: Image.Image, width: int) -> Image.Image:
    return im.resize((width, max(1, round(im.height * width / im.width))), Image.Resampling.LANCZOS)


def headline(photo: Image.Image, words: str, style: int = 0, size_frac: float = 0.09, y_frac: float = 0.1):
    """`words` across `photo` like a cookbook cover or an advert (font height: size_frac of the width)."""
    from PIL import ImageDraw, ImageFont

    im = photo.convert("RGB")
    draw = ImageDraw.Draw(im)
    size = max(12, round(size_frac * im.width))
    font = ImageFont.load_default(size=size)
    while draw.textlength(words, font=font) > im.width * 0.92 and size > 12:
        size -= 2
        font = ImageFont.load_default(size=size)
    fill, box, outline = STYLES[style % len(STYLES)]
    x = (im.width - draw.textlength(words, font=font)) / 2
    y = y_frac * (im.height - size)
    if box:
        left, top, right, bottom = draw.textbbox((x, y), words, font=font)
        draw.rectangle([left - 6, top - 6, right + 6, bottom + 6], fill=box)
    draw.text((x, y), words, fill=fill, font=font, stroke_width=2 if outline else 0, stroke_fill=outline)
    return im


def rule_examples(widths=(512, 274), photos=PHOTOS, n_text: int = 0):
    """[(name, image, has_text)]: the photos (no text) at each width, skimage's printed page, and
    headlines over photos (every style, several sizes and heights; n_text > 0 keeps only the first n)."""
    out = []
    for name in photos:
        for w in widths:
            out.append((f"{name}@{w}", fit_width(skimage_photo(name), w), False))
    out.append(("page", skimage_photo("page"), True))
    bases = ("coffee", "chelsea", "astronaut", "rocket", "immunohistochemistry", "gravel")
    texts = []
    for i, base in enumerate(bases):
        for s in range(len(STYLES)):
            for w in widths:
                words = HEADLINES[(i + s) % len(HEADLINES)]
                size, y = (0.08, 0.1, 0.11)[(i + s) % 3], (0.08, 0.5, 0.9)[(i * 2 + s) % 3]
                im = headline(fit_width(skimage_photo(base), w), words, s, size, y)
                texts.append((f"{base}+text{s}@{w}", im, True))
    return out + (texts[:n_text] if n_text else texts)
