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
from collections import Counter, deque
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import distributed
from .data import CaptionDataset, ImageError, cache_root, load_image, log, split_records
from .imaging import pixel_normalizer, processor_crop, processor_resample, processor_size, square_pixels

VERSION = 1


def _fingerprint(paths, *extra) -> str:
    h = hashlib.sha256(json.dumps([VERSION, *extra]).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{Path(p).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _decode(args):
    path, size, resample, crop = (*args, 0)[:4]
    try:
        return square_pixels(load_image(path), size, resample, crop), None
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # a decoder bug on a hostile file is still just a bad image
        return None, f"cannot decode ({type(e).__name__})"


def _decode_chunk(jobs):
    return [_decode(j) for j in jobs]


def _decoded(jobs, workers: int, ahead: int = 256):
    """_decode(job) for every job, in order, in a pool of `workers` processes when that pays off. At most
    `ahead` decoded images wait in memory however slowly the consumer (an encoder) takes them."""
    if workers <= 1 or len(jobs) < 64:
        yield from map(_decode, jobs)
        return
    chunk = 16
    chunks = iter([jobs[i:i + chunk] for i in range(0, len(jobs), chunk)])
    with get_context("fork").Pool(workers) as pool:
        pending = deque(pool.apply_async(_decode_chunk, (c,)) for c in islice(chunks, max(1, ahead // chunk)))
        while pending:
            results = pending.popleft().get()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(pool.apply_async(_decode_chunk, (nxt,)))
            yield from results


class _RowWriter:
    """A .npy file written row by row with plain writes (never a memory map, whose touched pages would
    count in the process's memory): header on the first row, the full shape reserved, committed by rename."""

    def __init__(self, path: Path, rows: int, dtype):
        self.path, self.rows, self.dtype = path, rows, np.dtype(dtype)
        self.tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        self.f, self.written, self.row_shape = None, 0, None

    def write(self, block: np.ndarray) -> None:
        if self.f is None:
            self.row_shape = block.shape[1:]
            self.f = open(self.tmp, "wb")
            np.lib.format.write_array_header_2_0(self.f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                          "fortran_order": False,
                                                          "shape": (self.rows, *self.row_shape)})
            self.start = self.f.tell()
        self.f.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.written += len(block)

    def commit(self) -> bool:
        """False when nothing was written (no file)."""
        if self.f is None:
            return False
        self.f.truncate(self.start + self.rows * int(np.prod(self.row_shape)) * self.dtype.itemsize)  # rows of
        self.f.flush()  # skipped images stay as zeros at the end; readers keep the first len(kept) rows
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        return True

    def discard(self) -> None:
        if self.f is not None:
            self.f.close()
            self.tmp.unlink(missing_ok=True)


def _commit_meta(meta: Path, kept, failed) -> None:
    tmp = meta.with_name(meta.name + f".tmp{os.getpid()}")  # the .json is the commit point: written last
    tmp.write_text(json.dumps({"kept": kept, "failed": failed}))
    os.replace(tmp, meta)


def _read(data: Path, meta: Path, records, desc):
    info = json.loads(meta.read_text())
    _report(desc, info["failed"])
    arr = np.load(data, mmap_mode="r")[: len(info["kept"])]
    return arr, [records[i] for i in info["kept"]], Counter(r for _, r in info["failed"])


def pixel_cache(records, size: int, resample: int = 2, cache_dir=None, workers: int = 2, desc: str = "pixels",
                crop: int = 0):
    """(uint8 array [N,3,size,size] memory-mapped, kept records, Counter of skips by reason).

    crop > 0: resize the shorter side to `size`, then take the centred crop x crop square (CLIP, SigLIP
    processors); else resize straight to size x size (ViT). Under several processes the main process of
    each machine decodes and writes the file; the others wait and read it. Decoded images go straight
    to the file: memory stays flat however many images there are."""
    side = crop or size
    if not records:
        return np.zeros((0, 3, side, side), np.uint8), [], Counter()
    root = cache_root(cache_dir)
    extra = ("pixels", size, int(resample)) + ((crop,) if crop else ())
    key = _fingerprint([r.path for r in records], *extra)
    data, meta = root / f"pixels-{key}.npy", root / f"pixels-{key}.json"
    with distributed.local_main_first():
        if data.exists() and meta.exists():
            return _read(data, meta, records, desc)
        jobs = [(str(r.path), size, int(resample), crop) for r in records]
        writer, kept, failed = _RowWriter(data, len(records), np.uint8), [], []
        bar = dict(total=len(jobs), desc=f"decoding {desc}", unit="img", leave=False, mininterval=1)
        try:
            for i, (arr, err) in enumerate(tqdm(_decoded(jobs, workers), **bar)):
                if err is None:
                    writer.write(arr[None])
                    kept.append(i)
                else:
                    failed.append((records[i].image_name, err))
        except BaseException:
            writer.discard()
            raise
        if not writer.commit():
            _report(desc, failed)
            return np.zeros((0, 3, side, side), np.uint8), [], Counter(r for _, r in failed)
        _commit_meta(meta, kept, failed)
        log(f"{desc}: decoded {len(kept)} images into the pixel cache")
        return _read(data, meta, records, desc)


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
    distributed.state(cfg)  # under a launcher: join the other processes, so that one of them builds the cache
    size, resample = processor_size(processor), processor_resample(processor)
    out = {}
    for split in splits:
        records, _ = split_records(cfg, split)
        if cfg.limit:
            records = records[: cfg.limit]
        arr, kept, _ = pixel_cache(records, size, resample, cfg.cache_dir or None, cfg.workers, desc=split,
                                   crop=processor_crop(processor))
        out[split] = CaptionDataset(kept, arr)
    return out


# ------------------------------------------------------------------------------ feature cache
def encoder_fingerprint(module) -> str:
    """A hash of a module's class and every weight that can change its token outputs (last_hidden_state):
    two encoders share cached features only if these are equal. A pooler is left out: it only makes
    pooler_output, which no cache stores, and checkpoints that do not ship it initialise it at random
    on every load (the key, and a multi-GB cache file, would change every run)."""
    import torch

    h = hashlib.blake2b(type(module).__name__.encode(), digest_size=16)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.split(".")[0] == "pooler":
                continue
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def processor_key(processor) -> list:
    """Everything about an image processor that changes the encoder's input."""
    crop = processor_crop(processor)
    return [processor_size(processor), processor_resample(processor),
            list(getattr(processor, "image_mean", None) or [0.5] * 3),
            list(getattr(processor, "image_std", None) or [0.5] * 3),
            float(getattr(processor, "rescale_factor", 1 / 255)),
            bool(getattr(processor, "do_normalize", True))] + ([crop] if crop else [])


def feature_cache(records, processor, encoder, cache_dir=None, workers: int = 2, batch_size: int = 64,
                  desc: str = "features", dtype: str = "float16", encoder_key: str | None = None, device=None):
    """A frozen encoder's outputs for every image, computed once: (memory-mapped array [N, tokens, dim],
    kept records, Counter of skips by reason).

    `encoder(pixel_values=...)` must return `.last_hidden_state`; it runs without gradients on `device`
    (default: this process's device, its own GPU under a launcher), where it is moved only when
    something is computed. The file is keyed by the images (path, size, mtime), the encoder's weights
    (encoder_fingerprint, or `encoder_key`), the processor settings and the storage dtype, so a
    changed image, a retrained encoder or another processor never reads stale features. Stored as
    float16 by default (half the disk; cast back to float32 when read by the model). Under several
    processes the main process of each machine computes and writes the file; the others wait and
    read it. Features go straight to the file and at most a few batches of decoded images wait in
    memory: memory stays flat however many images there are.
    """
    import torch

    if not records:
        return np.zeros((0, 0, 0), dtype), [], Counter()
    pkey = processor_key(processor)
    size, resample, crop = pkey[0], pkey[1], processor_crop(processor)
    root = cache_root(cache_dir)
    key = _fingerprint([r.path for r in records], "features", encoder_key or encoder_fingerprint(encoder),
                       pkey, dtype)
    data, meta = root / f"features-{key}.npy", root / f"features-{key}.json"
    with distributed.local_main_first():
        if data.exists() and meta.exists():
            return _read(data, meta, records, desc)
        norm = pixel_normalizer(processor)
        device = torch.device(device) if device is not None else distributed.device()
        encoder.to(device).eval()
        writer, kept, failed, batch = _RowWriter(data, len(records), dtype), [], [], []

        def flush():
            if batch:
                pixels = torch.from_numpy(np.stack([a for _, a in batch])).to(device)
                with torch.no_grad():
                    writer.write(encoder(pixel_values=norm(pixels)).last_hidden_state.float().cpu().numpy())
                kept.extend(i for i, _ in batch)
                batch.clear()

        jobs = [(str(r.path), size, resample, crop) for r in records]
        bar = dict(total=len(jobs), desc=f"encoding {desc}", unit="img", leave=False, mininterval=1)
        try:
            for i, (arr, err) in enumerate(tqdm(_decoded(jobs, workers, ahead=4 * batch_size), **bar)):
                if err is None:
                    batch.append((i, arr))
                    if len(batch) == batch_size:
                        flush()
                else:
                    failed.append((records[i].image_name, err))
            flush()
        except BaseException:
            writer.discard()
            raise
        if not writer.commit():  # nothing decodable: an empty cache, nothing to store
            _report(desc, failed)
            return np.zeros((0, 0, 0), dtype), [], Counter(r for _, r in failed)
        _commit_meta(meta, kept, failed)  # the commit point: features without their meta are never read
        log(f"{desc}: encoded {len(kept)} images into the feature cache")
        return _read(data, meta, records, desc)


def feature_datasets(cfg, processor, encoder, splits=("train", "valid", "test"), dtype: str = "float16",
                     encoder_key: str | None = None) -> dict:
    """One CaptionDataset per split whose items hold a frozen encoder's features (key "features").

    Like pixel_datasets, but through feature_cache: the encoder runs once per image, ever."""
    import time

    distributed.state(cfg)  # under a launcher: join the other processes, so that one of them builds the cache
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
