"""Dataset layout, CSV reading and row cleaning, seeded split, safe image loading.

Layout used by every script:
    DATA_DIR/train_data.csv, valid_data.csv, test_data.csv   columns Title, Image_Name (others kept;
                                                              an optional References column holds a
                                                              JSON list of extra valid titles)
    IMAGES_DIR/<Image_Name>.jpg (.jpeg, .png)                 default IMAGES_DIR = DATA_DIR/images

    python -m captioning.data split --csv "<Kaggle CSV>" --images "<Food Images dir>" --out DIR
turns the Kaggle download into that layout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps

from .config import UserError, run_main
from .text import normalize

SPLITS = ("train", "valid", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
REQUIRED = ("Title", "Image_Name")
BAD_TITLES = {"#NAME?", "nan", "NaN", "None"}
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not half a picture


class ImageError(Exception):
    """An image that cannot be used; the message is a short reason."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- CSV files
def read_csv(path, required=REQUIRED) -> pd.DataFrame:
    """Read a CSV as strings. Missing/empty file or missing columns: UserError (one sentence)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file.")
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError(f"{path} is empty: expected a CSV with columns {', '.join(required)}.")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # "Unicode text" as Excel saves it
        try:
            raw = raw.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path} starts like UTF-16 text but does not decode as UTF-16.") from None
    if b"\x00" in raw[:65536]:
        raise UserError(f"{path} holds binary data, not a CSV text file.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        log(f"warning: {path} is not valid UTF-8; read it as Latin-1.")
    import io

    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise UserError(f"{path} is not a readable CSV ({str(e).splitlines()[0]}).") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = ", ".join(str(c)[:40] for c in df.columns[:8])
        header = text.splitlines()[0] if text.splitlines() else ""
        sep = next((f"{d!r}" for d in (";", "\t", "|") if d in header), None)
        hint = f"it looks separated by {sep}, not commas" if sep else "expected a header row with these columns"
        raise UserError(f"{path} has no {' or '.join(missing)} column (found: {found}); {hint}.")
    return df


def resolve_image(images_dir, name) -> Path | None:
    """Path of image `name` inside `images_dir`, or None if absent or unsafe.

    A name with a path separator, `..`, an absolute path, or a symlink that leads outside the
    folder never resolves: a CSV cannot make us read (or later move) anything outside it.
    """
    name = str(name).strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return None
    root = Path(images_dir).resolve()
    stems = [name] if name.lower().endswith(IMAGE_EXTS) else [name + ext for ext in IMAGE_EXTS]
    for cand in stems:
        p = root / cand
        try:
            real = p.resolve()
        except (OSError, RuntimeError):
            continue
        if real.parent != root and root not in real.parents:
            continue
        if real.is_file():
            return p
    return None


def is_unsafe_name(name) -> bool:
    name = str(name).strip()
    return ("/" in name or "\\" in name or "\x00" in name or name in (".", "..")
            or os.path.isabs(name))


def links_outside(images_dir, name) -> bool:
    """True when `name` in images_dir is a symlink (or other entry) that leads outside the folder."""
    root = Path(images_dir).resolve()
    name = str(name).strip()
    stems = [name] if name.lower().endswith(IMAGE_EXTS) else [name + ext for ext in IMAGE_EXTS]
    for cand in stems:
        p = root / cand
        try:
            if (p.is_symlink() or p.exists()) and root not in p.resolve().parents:
                return True
        except (OSError, RuntimeError):  # a symlink loop
            return True
    return False


@dataclass
class Record:
    image_name: str
    title: str  # normalised training target and first reference
    path: Path
    references: list[str] = field(default_factory=list)  # all valid titles (title first)
    row: dict = field(default_factory=dict)  # the CSV row as read (other columns kept)


def _references(title: str, extra: str) -> list[str]:
    refs = [title]
    if extra:
        try:
            more = json.loads(extra)
        except json.JSONDecodeError:
            more = []
        for r in more if isinstance(more, list) else []:
            r = normalize(r)
            if r and r not in refs:
                refs.append(r)
    return refs


def clean_rows(df: pd.DataFrame, images_dir, where: str = "", check_images: bool = True,
               dropped: list | None = None):
    """Rows -> usable Records, plus a Counter of skipped rows by reason (also printed, with names).

    `dropped`, if given, receives (row, reason) for every skipped row (cleaning reports them)."""
    records, skips, examples = [], Counter(), {}
    seen = set()
    for row in df.to_dict("records"):
        name = str(row.get("Image_Name", "")).strip()
        title = normalize(row.get("Title", ""))
        reason = None
        if not name:
            reason = "empty Image_Name"
        elif is_unsafe_name(name):
            reason = "unsafe image name"
        elif not title:
            reason = "empty title"
        elif title in BAD_TITLES:
            reason = "#NAME? title"
        elif (name, title) in seen:
            reason = "duplicate row"
        path = None
        if reason is None and check_images:
            path = resolve_image(images_dir, name)
            if path is None:
                outside = links_outside(images_dir, name)
                reason = "image outside the images folder" if outside else "missing image"
        if reason:
            skips[reason] += 1
            examples.setdefault(reason, []).append(name or "<blank>")
            if dropped is not None:
                dropped.append((row, reason))
            continue
        seen.add((name, title))
        records.append(Record(name, title, path, _references(title, row.get("References", "")), row))
    if not records:
        log(f"{where}no usable rows (of {len(df)}).")
    if skips:
        parts = ", ".join(f"{r}: {n} ({', '.join(examples[r][:3])}{', ...' if n > 3 else ''})"
                          for r, n in skips.items())
        log(f"{where}skipped {sum(skips.values())} row(s): {parts}")
    return records, skips


def split_csv(data_dir, split: str) -> Path:
    return Path(data_dir) / f"{split}_data.csv"


def load_split(data_dir, split: str, images_dir=None, check_images: bool = True):
    """Records of one split of the layout, bad rows skipped with a counted, named warning."""
    data_dir = Path(data_dir)
    images_dir = Path(images_dir) if images_dir else data_dir / "images"
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist.")
    if check_images and not images_dir.is_dir():
        raise UserError(f"images folder {images_dir} does not exist (set --images-dir).")
    df = read_csv(split_csv(data_dir, split))
    return clean_rows(df, images_dir, where=f"{split}: ", check_images=check_images)


def folder_records(images_dir) -> list[Record]:
    """Records (no title) of every .jpg/.jpeg/.png directly inside a folder, sorted by name:
    for captioning new photos. Symlinks that lead outside the folder are left out."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(f"images folder {images_dir} does not exist.")
    names = sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    paths = [(n, resolve_image(images_dir, n)) for n in names]
    records = [Record(n, "", p, [""]) for n, p in paths if p is not None]
    if not records:
        raise UserError(f"{images_dir} holds no .jpg, .jpeg or .png images.")
    return records


# --------------------------------------------------------------------------------------- images
def load_image(path) -> Image.Image:
    """Open any image as 8-bit RGB, EXIF-oriented. Raises ImageError with a short reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("decompression bomb (too many pixels)") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"cannot decode ({str(e)[:60]})") from None
    if im.width < 1 or im.height < 1:
        raise ImageError("empty image")
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


# ---------------------------------------------------------------------------------- torch Dataset
class CaptionDataset:
    """Items of one split: cached uint8 pixels (or frozen-encoder features) + caption + name.

    `arrays` is indexable by position (a memory-mapped cache from captioning.cache).
    """

    def __init__(self, records: list[Record], arrays, key: str = "pixels"):
        assert len(records) == len(arrays), "records and cache disagree"
        self.records, self.arrays, self.key = records, arrays, key

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        import torch

        r = self.records[i]
        return {self.key: torch.from_numpy(np.array(self.arrays[i])), "caption": r.title,
                "references": r.references, "image_name": r.image_name, "index": i}


def collate(items: list[dict]) -> dict:
    import torch

    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


# --------------------------------------------------------------------------------- Kaggle -> layout
def course_split(n: int, seed: int = 42):
    """Indices (train, valid, test) exactly as the course's two sklearn calls make them:
    train_test_split(test_size=0.2, random_state=seed), then the 20% halved the same way.
    Re-implemented (ShuffleSplit's permutation) so the project needs no scikit-learn."""
    def shuffle_split(m, test_size):
        n_test = int(np.ceil(test_size * m))
        perm = np.random.RandomState(seed).permutation(m)
        return perm[n_test:], perm[:n_test]

    train, held = shuffle_split(n, 0.2)
    v, t = shuffle_split(len(held), 0.5)
    return train, held[v], held[t]


def split_main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m captioning.data split",
        description="Turn the Kaggle 'Food Ingredients and Recipes Dataset with Images' download into "
        "train/valid/test CSVs (seeded 80/10/10, the course's procedure).")
    p.add_argument("--csv", required=True, help="the Kaggle CSV (Food Ingredients and Recipe Dataset ...csv)")
    p.add_argument("--images", required=True, help="the Kaggle 'Food Images' folder")
    p.add_argument("--out", required=True, help="output folder for {train,valid,test}_data.csv")
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--link-images", action="store_true",
                   help="also create OUT/images as a symlink to --images (scripts then need no --images-dir)")
    a = p.parse_args(argv)
    images = Path(a.images)
    if not images.is_dir():
        raise UserError(f"images folder {images} does not exist.")
    df = read_csv(a.csv)
    df = df.loc[:, [c for c in df.columns if not c.startswith("Unnamed")]]
    records, skips = clean_rows(df, images, where="split: ")
    if not records:
        raise UserError(f"no usable rows in {a.csv} (skipped: {dict(skips)}).")
    keep = pd.DataFrame([r.row for r in records])
    keep["Title"] = [r.title for r in records]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, idx in zip(SPLITS, course_split(len(keep), a.seed)):
        target = split_csv(out, split)
        tmp = target.with_suffix(".csv.tmp")
        keep.iloc[np.sort(idx)].to_csv(tmp, index=False)
        os.replace(tmp, target)
        print(f"{split}: {len(idx)} rows -> {target}")
    if a.link_images and not (out / "images").exists():
        (out / "images").symlink_to(images.resolve(), target_is_directory=True)
    print(f"kept {len(keep)} of {len(df)} rows; dropped {dict(skips) or 'none'}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m captioning.data split --csv CSV --images DIR --out DIR [--seed 42]")
        return
    if argv[0] != "split":
        raise UserError(f"unknown command {argv[0]!r}; the only command is 'split'.")
    split_main(argv[1:])


if __name__ == "__main__":
    run_main(main)
