"""Dataset layout, CSV reading and row cleaning, seeded split, safe image loading.

Layout used by every script:
    DATA_DIR/train_data.csv, valid_data.csv, test_data.csv   columns Title, Image_Name (others kept;
                                                              an optional References column holds a
                                                              JSON list of extra valid titles)
    IMAGES_DIR/<Image_Name>.jpg (.jpeg, .png)                 default IMAGES_DIR = DATA_DIR/images

    python -m captioning.data split --csv "<Kaggle CSV>" --images-dir "<Food Images/Food Images>" --out DIR
turns the Kaggle download into that layout.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps

from .config import UserError, check_folders, run_main
from .text import normalize

SPLITS = ("train", "valid", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SPLIT_SEED = 42  # the course's split seed: `split` and a --dataset without its own splits use it
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
    for cand in _candidates(name):
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


def _candidates(name: str) -> list[str]:
    """File names a CSV's Image_Name may mean: itself when it has an image extension, else the name
    with each extension in lower or upper case (a camera's IMG_0001.JPG for the row IMG_0001)."""
    if name.lower().endswith(IMAGE_EXTS):
        return [name]
    return [name + e for ext in IMAGE_EXTS for e in (ext, ext.upper())]


def is_unsafe_name(name) -> bool:
    name = str(name).strip()
    return ("/" in name or "\\" in name or "\x00" in name or name in (".", "..")
            or os.path.isabs(name))


def links_outside(images_dir, name) -> bool:
    """True when `name` in images_dir is a symlink (or other entry) that leads outside the folder."""
    root = Path(images_dir).resolve()
    name = str(name).strip()
    for cand in _candidates(name):
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
    check_folders(data_dir, images_dir if check_images else None)
    df = read_csv(split_csv(data_dir, split))
    return clean_rows(df, images_dir, where=f"{split}: ", check_images=check_images)


def cache_root(cache_dir: str | None = None) -> Path:
    """The cache folder: --cache-dir, else $FOODCAP_CACHE, else ~/.cache/foodcap (created)."""
    root = Path(cache_dir or os.environ.get("FOODCAP_CACHE") or Path.home() / ".cache" / "foodcap")
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_folders(cfg) -> tuple[Path, Path]:
    """(data folder, images folder) of a config: --data-dir and --images-dir (default DATA_DIR/images),
    or, with --dataset, the layout that dataset is turned into (dataset_layout)."""
    if getattr(cfg, "dataset", ""):
        if cfg.images_dir:
            raise UserError("--images-dir goes with --data-dir; a --dataset brings its own images.")
        return dataset_layout(cfg.dataset, cfg.cache_dir or None)
    data = Path(cfg.data_dir)
    return data, Path(cfg.images_dir) if cfg.images_dir else data / "images"


def run_folders(settings: dict) -> tuple[Path | None, Path | None]:
    """(data folder, images folder) a finished run read, from its config.json (`settings`), without
    loading anything: --data-dir/--images-dir, or where --dataset was laid out (dataset_dir)."""
    if settings.get("dataset"):
        root = dataset_dir(str(settings["dataset"]), settings.get("cache_dir") or None)
        return root, root / "images"
    data = Path(settings["data_dir"]) if settings.get("data_dir") else None
    images = settings.get("images_dir") or (data / "images" if data else None)
    return data, Path(images) if images else None


def split_records(cfg, split: str, check_images: bool = True):
    """Records of one split of whatever the config points at (--data-dir or --dataset): load_split."""
    data, images = data_folders(cfg)
    return load_split(data, split, images, check_images)


def folder_records(images_dir) -> list[Record]:
    """Records (no title) of every .jpg/.jpeg/.png directly inside a folder, sorted by name:
    for captioning new photos. Symlinks that lead outside the folder are left out."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(f"images folder {images_dir} does not exist.")
    entries = sorted(images_dir.iterdir())
    names = [p.name for p in entries if p.suffix.lower() in IMAGE_EXTS and not p.is_dir()]
    paths = [(n, resolve_image(images_dir, n)) for n in names]
    records = [Record(n, "", p, [""]) for n, p in paths if p is not None]
    left = [p.name + "/" if p.is_dir() else p.name for p in entries if p.name not in
            {r.image_name for r in records} and not p.name.startswith(".")]
    if left:
        folders = sum(n.endswith("/") for n in left)
        log(f"left out {len(left)} entr{'y' if len(left) == 1 else 'ies'} of {images_dir} "
            f"({', '.join(left[:5])}{', ...' if len(left) > 5 else ''}): only {', '.join(IMAGE_EXTS)} files "
            f"directly inside are captioned{'; pass each subfolder on its own' if folders else ''}.")
    if not records:
        raise UserError(f"{images_dir} holds no images ({', '.join(IMAGE_EXTS)}) directly inside it.")
    return records


# ------------------------------------------------------------------- Hugging Face `datasets` -> layout
TITLE_COLUMNS = ("Title", "title", "caption", "captions", "text", "sentences", "sentence")
NAME_COLUMNS = ("Image_Name", "image_name", "file_name", "image_id", "id")
HUB_SPLITS = {"train": "train", "validation": "valid", "valid": "valid", "val": "valid", "dev": "valid",
              "test": "test"}
_layouts: dict = {}


def dataset_dir(dataset: str, cache_dir: str | None = None) -> Path:
    """Where --dataset DATASET is laid out (CACHE/datasets/<name>-<hash>): a pure function of its
    arguments, so the report finds the images of a run without loading anything."""
    import hashlib

    local = Path(dataset).expanduser()
    key = str(local.resolve()) if local.exists() else dataset
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in key.rstrip("/").split("/")[-1])[:40]
    digest = hashlib.sha256(json.dumps([key, SPLIT_SEED]).encode()).hexdigest()[:12]
    return cache_root(cache_dir) / "datasets" / f"{slug}-{digest}"


def _load_hub_dataset(dataset: str, cache_dir: str | None):
    """datasets.load_dataset(dataset) as a DatasetDict; offline or unknown ids get one sentence."""
    try:
        import datasets
    except ImportError:
        raise UserError("--dataset needs the `datasets` package: pip install datasets") from None
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    local = Path(dataset).expanduser()
    if dataset.startswith((".", "/", "~")) and not local.exists():
        raise UserError(f"dataset folder {dataset} does not exist.")
    # a local folder's arrow files go to our cache folder; a hub dataset stays in the Hugging Face cache
    kw = {"cache_dir": str(cache_root(cache_dir) / "datasets" / "arrow")} if local.exists() else {}
    try:
        out = datasets.load_dataset(str(local) if local.exists() else dataset, **kw)
    except (ConnectionError, TimeoutError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        how = ("HF_HUB_OFFLINE is set: run once without it to download the dataset" if offline
               else "the hub cannot be reached")
        raise UserError(f"cannot load dataset {dataset!r}: it is not in the cache and {how} "
                        f"({str(e).splitlines()[0][:120]}).") from None
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise UserError(f"cannot load dataset {dataset!r} ({str(e).splitlines()[0][:160]}).") from None
    if isinstance(out, datasets.Dataset):
        out = datasets.DatasetDict({"train": out})
    return out


def _columns(ds, dataset: str) -> tuple[str, str, str | None]:
    """(image column, title column, name column or None) of a datasets.Dataset."""
    import datasets

    images = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
    titles = [c for c in TITLE_COLUMNS if c in ds.features]
    if not images or not titles:
        raise UserError(f"dataset {dataset} has no {'image' if not images else 'title'} column "
                        f"(columns: {', '.join(ds.features)}); expected an image and one of "
                        f"{', '.join(TITLE_COLUMNS)} (an imagefolder: metadata.csv with file_name,Title).")
    names = [c for c in NAME_COLUMNS if c in ds.features and c not in images]
    return images[0], titles[0], names[0] if names else None


def _image_source(value) -> tuple[Path | None, bytes | None, str]:
    """(local file or None, encoded bytes or None, file extension) of one undecoded datasets.Image value:
    a local image is linked or copied later, never read here."""
    value = value or {}
    path = value.get("path") or ""
    src = Path(path) if value.get("bytes") is None and path and Path(path).is_file() else None
    data = None if src else value.get("bytes")
    ext = Path(path).suffix.lower()
    if ext not in IMAGE_EXTS and (src or data):
        head = src.open("rb").read(12) if src else data[:12]
        ext = ".png" if head[:8] == b"\x89PNG\r\n\x1a\n" else ".webp" if head[8:12] == b"WEBP" else ".jpg"
    return src, data, ext


def dataset_layout(dataset: str, cache_dir: str | None = None) -> tuple[Path, Path]:
    """Turn a Hugging Face dataset (a hub id or a local `imagefolder` with metadata.csv per split folder)
    into the toolkit's layout: (data folder with {train,valid,test}_data.csv, images folder).

    Splits are the dataset's own (train, validation/valid/val, test); a dataset with a single split gets
    the seeded 80/10/10 split of `captioning.data split` (SPLIT_SEED), and one without a validation
    split gets it from its train rows the same way. Titles come from the first of TITLE_COLUMNS (a list
    of captions: the first is the title, all are references); image names from a file-name column or
    the image file's name, else SPLIT-ROW. Every image is written once into the layout's images folder
    (a hard link when the file is local); rows then go through load_split's cleaning and safety rules
    like any CSV row. The layout is rebuilt when the dataset's fingerprint changes."""
    key = (dataset, str(cache_root(cache_dir)))
    if key in _layouts:
        return _layouts[key]
    hub = _load_hub_dataset(dataset, cache_dir)
    out = dataset_dir(dataset, cache_dir)
    fingerprint = {name: getattr(ds, "_fingerprint", None) or f"{ds.num_rows}" for name, ds in hub.items()}
    manifest = out / "dataset.json"
    try:
        done = json.loads(manifest.read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        done = False
    if not done:
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        frames = _write_layout(hub, dataset, tmp)
        (tmp / "dataset.json").write_text(json.dumps({"dataset": dataset, "fingerprint": fingerprint,
                                                      "rows": {s: len(f) for s, f in frames.items()}}))
        if out.exists():  # a changed dataset: the old layout goes, the new one takes its place
            old = out.with_name(f"{out.name}.old{os.getpid()}")
            os.replace(out, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:  # another process laid it out at the same moment: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        rows = json.loads(manifest.read_text())["rows"]
        log(f"dataset {dataset}: " + ", ".join(f"{s} {n} rows" for s, n in rows.items()) + f" -> {out}")
    _layouts[key] = (out, out / "images")
    return _layouts[key]


def _write_layout(hub, dataset: str, out: Path) -> dict:
    """Write every split's CSV and image files into `out`; returns the frames by split."""
    import datasets

    tables, written = {}, {}
    for name, ds in hub.items():
        image_col, title_col, name_col = _columns(ds, dataset)
        table = tables[name] = []
        for i, row in enumerate(ds.cast_column(image_col, datasets.Image(decode=False))):
            title = row[title_col]
            refs = [str(t) for t in title] if isinstance(title, (list, tuple)) else [str(title or "")]
            src, data, ext = _image_source(row[image_col])
            path = (row[image_col] or {}).get("path") or ""
            image = str(row[name_col]) if name_col else Path(path).stem or f"{name}-{i:06d}"
            if image.lower().endswith(IMAGE_EXTS):
                image = image[: image.rfind(".")]
            identity = str(src) if src else (name, i)  # rows of one local file share its image
            if written.get(image, identity) != identity:  # two images of one name: the later is renamed
                image = f"{image}-{name}-{i:06d}"
            if (src or data) and image not in written and not is_unsafe_name(image):  # load_split names unsafe
                dst = out / "images" / f"{image}{ext}"
                if data is not None:
                    dst.write_bytes(data)
                else:
                    try:
                        os.link(src, dst)  # no copy when the cache is on the same disk
                    except OSError:
                        shutil.copyfile(src, dst)
            written[image] = identity
            table.append({"Title": refs[0] if refs else "", "Image_Name": image,
                          "References": json.dumps(refs) if len(refs) > 1 else ""})
    frames = {n: pd.DataFrame(t, columns=["Title", "Image_Name", "References"]) for n, t in tables.items()}
    own = {HUB_SPLITS[n]: frames[n] for n in frames if n in HUB_SPLITS}
    if "train" in own and "test" in own:
        if "valid" not in own:  # carve a validation split out of train, seeded
            train, valid = _shuffle_split(len(own["train"]), 0.1)
            own["train"], own["valid"] = (own["train"].iloc[np.sort(idx)] for idx in (train, valid))
    else:  # one split (or names we do not know): exactly what `captioning.data split` does with one CSV
        own, _ = seeded_split(pd.concat(list(frames.values()), ignore_index=True), out / "images",
                              f"dataset {dataset}: ")
    for split in SPLITS:
        own[split].to_csv(split_csv(out, split), index=False)
    return own


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
def _shuffle_split(m: int, test_size: float, seed: int = SPLIT_SEED):
    """(kept, held-out) indices as sklearn's train_test_split(test_size=..., random_state=seed) draws them."""
    n_test = int(np.ceil(test_size * m))
    perm = np.random.RandomState(seed).permutation(m)
    return perm[n_test:], perm[:n_test]


def course_split(n: int, seed: int = SPLIT_SEED):
    """Indices (train, valid, test) exactly as the course's two sklearn calls make them:
    train_test_split(test_size=0.2, random_state=seed), then the 20% halved the same way.
    Re-implemented (ShuffleSplit's permutation) so the project needs no scikit-learn."""
    train, held = _shuffle_split(n, 0.2, seed)
    v, t = _shuffle_split(len(held), 0.5, seed)
    return train, held[v], held[t]


def seeded_split(df: pd.DataFrame, images, where: str, seed: int = SPLIT_SEED, source=None):
    """({split: DataFrame}, Counter of skipped rows): usable rows of one table (load_split's rules;
    titles normalised) split 80/10/10 by course_split."""
    records, skips = clean_rows(df, images, where=where)
    if not records:
        hint = _images_one_level_down(images, df)
        raise UserError(f"no usable rows in {source or 'the dataset'} (skipped: {dict(skips)}){hint}.")
    if skips["missing image"] > len(df) / 2:
        hint = _images_one_level_down(images, df)
        log(f"{where}{skips['missing image']} of {len(df)} images are missing from {images}{hint}.")
    keep = pd.DataFrame([r.row for r in records])
    keep["Title"] = [r.title for r in records]
    return {s: keep.iloc[np.sort(idx)] for s, idx in zip(SPLITS, course_split(len(keep), seed))}, skips


def _images_one_level_down(images, df) -> str:
    """'; the photos seem to be in SUBFOLDER: ...' when the named images sit one folder further down
    (the Kaggle download's "Food Images/Food Images"), else ''."""
    names = [n for n in df.get("Image_Name", pd.Series(dtype=str)).head(50) if str(n).strip()]
    for sub in sorted(p for p in Path(images).iterdir() if p.is_dir()) if Path(images).is_dir() else []:
        if any(resolve_image(sub, n) for n in names):
            return f"; the images seem to be one level down: pass {shlex.quote(str(sub))}"
    return ""


def split_main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m captioning.data split",
        description="Turn the Kaggle 'Food Ingredients and Recipes Dataset with Images' download into "
        "train/valid/test CSVs (seeded 80/10/10, the course's procedure).")
    p.add_argument("--csv", required=True, help="the Kaggle CSV (Food Ingredients and Recipe Dataset ...csv)")
    p.add_argument("--images-dir", "--images", dest="images", required=True, metavar="DIR",
                   help="the folder holding the photos: in the Kaggle download 'Food Images/Food Images'")
    p.add_argument("--out", required=True, help="output folder for {train,valid,test}_data.csv")
    p.add_argument("--seed", type=int, default=SPLIT_SEED, help=f"split seed (default {SPLIT_SEED})")
    p.add_argument("--link-images", action="store_true",
                   help="also create OUT/images as a symlink to --images-dir (scripts then need no "
                   "--images-dir)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different split already in OUT (cleaned data and runs made from it go "
                   "stale)")
    a = p.parse_args(argv)
    images = Path(a.images)
    if not images.is_dir():
        raise UserError(f"images folder {images} does not exist.")
    df = read_csv(a.csv)
    df = df.loc[:, [c for c in df.columns if not c.startswith("Unnamed")]]
    frames, skips = seeded_split(df, images, "split: ", a.seed, a.csv)
    out = Path(a.out)
    texts = {s: frames[s].to_csv(index=False) for s in SPLITS}
    old = [s for s in SPLITS if split_csv(out, s).exists()]
    if old and not a.overwrite and any(split_csv(out, s).read_text() != texts[s] for s in SPLITS
                                       if split_csv(out, s).exists()):
        held = ", ".join(split_csv(out, s).name for s in old)
        raise UserError(f"{out} already holds a different split ({held}; another --seed or CSV?): data "
                        "cleaned and runs trained from it would no longer match. "
                        "Choose a new --out, or pass --overwrite to replace it.")
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        target = split_csv(out, split)
        tmp = target.with_suffix(".csv.tmp")
        tmp.write_text(texts[split])
        os.replace(tmp, target)
        print(f"{split}: {len(frames[split])} rows -> {target}")
    link = out / "images"
    if a.link_images and not (link.exists() or link.is_symlink()):
        # relative paths give a relative link, so the pair can be moved together
        target = images.resolve() if images.is_absolute() or out.is_absolute() else \
            Path(os.path.relpath(images.resolve(), out.resolve()))
        link.symlink_to(target, target_is_directory=True)
    kept = sum(len(f) for f in frames.values())
    print(f"kept {kept} of {len(df)} rows; dropped {dict(skips) or 'none'}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("python -m captioning.data has one command, split:\n")
        split_main(["--help"])
        return
    if argv[0] != "split":
        raise UserError(f"unknown command {argv[0]!r}; the only command is 'split'.")
    split_main(argv[1:])


if __name__ == "__main__":
    run_main(main)
