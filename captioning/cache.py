"""Decode every image once: the pixel cache (and, for frozen encoders, the feature cache).

The pixel cache stores each image decoded, EXIF-oriented, converted to RGB and resized exactly as
the image processor would (PIL, same size and resample filter), as uint8 in a memory-mapped .npy.
Normalisation happens on the device (imaging.pixel_normalizer). A cache file is keyed by every
image's resolved path, size and mtime plus the target size and filter, so a changed image or
processor never reads a stale entry. Unreadable images are skipped with a counted, named warning.

The feature cache (feature_cache, feature_datasets) stores a frozen encoder's last_hidden_state per
image (float16, memory-mapped), keyed by the images as above plus a hash of the encoder's weights and
the processor settings: task2's ViT, or any frozen encoder, runs once per image across epochs and runs.

Cache folder: --cache-dir, else $FOODCAP_CACHE, else ~/.cache/foodcap (documented in the README).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .data import CaptionDataset, ImageError, cache_root, load_image, log, split_records
from .imaging import pixel_normalizer, processor_resample, processor_size, square_pixels

VERSION = 1


def _fingerprint(paths, *extra) -> str:
    h = hashlib.sha256(json.dumps([VERSION, *extra]).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{Path(p).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _decode(args):
    path, size, resample = args
    try:
        return square_pixels(load_image(path), size, resample), None
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # a decoder bug on a hostile file is still just a bad image
        return None, f"cannot decode ({type(e).__name__})"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pixel_cache(records, size: int, resample: int = 2, cache_dir=None, workers: int = 2, desc: str = "pixels"):
    """(uint8 array [N,3,size,size] memory-mapped, kept records, Counter of skips by reason)."""
    if not records:
        return np.zeros((0, 3, size, size), np.uint8), [], Counter()
    root = cache_root(cache_dir)
    key = _fingerprint([r.path for r in records], "pixels", size, int(resample))
    data, meta = root / f"pixels-{key}.npy", root / f"pixels-{key}.json"
    if data.exists() and meta.exists():
        info = json.loads(meta.read_text())
        kept = [records[i] for i in info["kept"]]
        _report(desc, info["failed"])
        return np.load(data, mmap_mode="r"), kept, Counter(r for _, r in info["failed"])
    jobs = [(str(r.path), size, int(resample)) for r in records]
    out = np.empty((len(records), 3, size, size), np.uint8)
    kept, failed = [], []
    bar = dict(total=len(jobs), desc=f"decoding {desc}", unit="img", leave=False, mininterval=1)
    if workers > 1 and len(jobs) >= 64:
        with get_context("fork").Pool(workers) as pool:
            results = pool.imap(_decode, jobs, chunksize=32)
            items = list(tqdm(results, **bar))
    else:
        items = [_decode(j) for j in tqdm(jobs, **bar)]
    for i, (arr, err) in enumerate(items):
        if err is None:
            out[len(kept)] = arr
            kept.append(i)
        else:
            failed.append((records[i].image_name, err))
    _atomic_save(data, out[: len(kept)])
    tmp = meta.with_name(meta.name + f".tmp{os.getpid()}")  # the .json is the commit point: write it last
    tmp.write_text(json.dumps({"kept": kept, "failed": failed}))
    os.replace(tmp, meta)
    _report(desc, failed)
    return np.load(data, mmap_mode="r"), [records[i] for i in kept], Counter(r for _, r in failed)


def _report(desc, failed):
    if failed:
        names = ", ".join(f"{n} ({r})" for n, r in failed[:5]) + (", ..." if len(failed) > 5 else "")
        log(f"{desc}: skipped {len(failed)} unreadable image(s): {names}")


def pixel_datasets(cfg, processor, splits=("train", "valid", "test"), encoder=None) -> dict:
    """One CaptionDataset per split, from the layout in cfg.data_dir/cfg.images_dir, via the pixel cache.

    cfg.limit > 0 keeps the first N rows of each split (quick checks). With `encoder` (a frozen
    one, e.g. the ViT of a ViT-GPT2 under --freeze vit), the items hold its outputs instead of pixels,
    from the feature cache (feature_datasets): the encoder runs once per image, ever."""
    if encoder is not None:
        return feature_datasets(cfg, processor, encoder, splits)
    size, resample = processor_size(processor), processor_resample(processor)
    out = {}
    for split in splits:
        records, _ = split_records(cfg, split)
        if cfg.limit:
            records = records[: cfg.limit]
        arr, kept, _ = pixel_cache(records, size, resample, cfg.cache_dir or None, cfg.workers, desc=split)
        out[split] = CaptionDataset(kept, arr)
    return out


# ------------------------------------------------------------------------------ feature cache
def encoder_fingerprint(module) -> str:
    """A hash of a module's class and every weight: two encoders share cached features only if equal."""
    import torch

    h = hashlib.blake2b(type(module).__name__.encode(), digest_size=16)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def processor_key(processor) -> list:
    """Everything about an image processor that changes the encoder's input."""
    return [processor_size(processor), processor_resample(processor),
            list(getattr(processor, "image_mean", None) or [0.5] * 3),
            list(getattr(processor, "image_std", None) or [0.5] * 3),
            float(getattr(processor, "rescale_factor", 1 / 255)),
            bool(getattr(processor, "do_normalize", True))]


def feature_cache(records, processor, encoder, cache_dir=None, workers: int = 2, batch_size: int = 64,
                  desc: str = "features", dtype: str = "float16", encoder_key: str | None = None):
    """A frozen encoder's outputs for every image, computed once: (memory-mapped array [N, tokens, dim],
    kept records, Counter of skips by reason).

    `encoder(pixel_values=...)` must return `.last_hidden_state`; it runs on its own device, without
    gradients. The file is keyed by the images (path, size, mtime), the encoder's weights
    (encoder_fingerprint, or `encoder_key`), the processor settings and the storage dtype, so a
    changed image, a retrained encoder or another processor never reads stale features. Stored as
    float16 by default (half the disk; cast back to float32 when read by the model).
    """
    import torch

    if not records:
        return np.zeros((0, 0, 0), dtype), [], Counter()
    pkey = processor_key(processor)
    size, resample = pkey[0], pkey[1]
    root = cache_root(cache_dir)
    key = _fingerprint([r.path for r in records], "features", encoder_key or encoder_fingerprint(encoder),
                       pkey, dtype)
    data, meta = root / f"features-{key}.npy", root / f"features-{key}.json"
    if data.exists() and meta.exists():
        info = json.loads(meta.read_text())
        _report(desc, info["failed"])
        arr = np.load(data, mmap_mode="r")[: len(info["kept"])]
        return arr, [records[i] for i in info["kept"]], Counter(r for _, r in info["failed"])
    norm = pixel_normalizer(processor)
    device = next(encoder.parameters()).device
    encoder.eval()
    tmp = data.with_name(data.name + f".tmp{os.getpid()}")
    out, kept, failed, batch = None, [], [], []

    def flush():
        nonlocal out
        if not batch:
            return
        pixels = torch.from_numpy(np.stack([a for _, a in batch])).to(device)
        with torch.no_grad():
            feats = encoder(pixel_values=norm(pixels)).last_hidden_state.float().cpu().numpy()
        if out is None:
            shape = (len(records), *feats.shape[1:])
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        out[len(kept): len(kept) + len(batch)] = feats.astype(dtype)
        kept.extend(i for i, _ in batch)
        batch.clear()

    jobs = [(str(r.path), size, resample) for r in records]
    bar = dict(total=len(jobs), desc=f"encoding {desc}", unit="img", leave=False, mininterval=1)
    pool = get_context("fork").Pool(workers) if workers > 1 and len(jobs) >= 64 else None
    try:
        items = pool.imap(_decode, jobs, chunksize=16) if pool else map(_decode, jobs)
        for i, (arr, err) in enumerate(tqdm(items, **bar)):
            if err is None:
                batch.append((i, arr))
                if len(batch) == batch_size:
                    flush()
            else:
                failed.append((records[i].image_name, err))
        flush()
    finally:
        if pool:
            pool.close()
            pool.join()
    if out is None:  # nothing decodable: an empty cache, nothing to store
        _report(desc, failed)
        return np.zeros((0, 0, 0), dtype), [], Counter(r for _, r in failed)
    out.flush()
    del out
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, data)
    meta_tmp = meta.with_name(meta.name + f".tmp{os.getpid()}")
    meta_tmp.write_text(json.dumps({"kept": kept, "failed": failed}))
    os.replace(meta_tmp, meta)  # the commit point: features without their meta are never read
    _report(desc, failed)
    arr = np.load(data, mmap_mode="r")[: len(kept)]
    return arr, [records[i] for i in kept], Counter(r for _, r in failed)


def feature_datasets(cfg, processor, encoder, splits=("train", "valid", "test"), dtype: str = "float16",
                     encoder_key: str | None = None) -> dict:
    """One CaptionDataset per split whose items hold a frozen encoder's features (key "features").

    Like pixel_datasets, but through feature_cache: the encoder runs once per image, ever."""
    import time

    key = encoder_key or encoder_fingerprint(encoder)
    out = {}
    for split in splits:
        records, _ = split_records(cfg, split)
        if cfg.limit:
            records = records[: cfg.limit]
        t0 = time.time()
        arr, kept, _ = feature_cache(records, processor, encoder, cfg.cache_dir or None, cfg.workers,
                                     desc=split, dtype=dtype, encoder_key=key)
        log(f"{split}: features of {len(kept)} images ready in {time.time() - t0:.1f} s")
        out[split] = CaptionDataset(kept, arr, key="features")
    return out
