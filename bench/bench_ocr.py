"""OCR throughput of the cleaning stage with a pool of 2 processes against 1, and the text rule's
figures on images anyone can regenerate.

    python bench/bench_ocr.py            # speed: images/s with 1 and 2 workers, and the speedup
    python bench/bench_ocr.py --rule     # the text rule on skimage photos, a printed page, headlines

Speed uses real-size (512 px) images, half plain photos and half with headline text, checked
exactly as imageCleaning/preprocess.py does (decode, blank test, hash, two OCR views per image).
`run()` returns {"ocr_speedup", "ocr_images_per_s_1", "ocr_images_per_s_2", "images", "cpus",
"cpu_speedup_2"}; the last is what two busy processes gain over one on this machine right now
(a pure-Python loop), so an OCR speedup can be read against what the CPUs actually offered.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioning.cleaning import (HEADLINES, PHOTOS, TextRule, check_images, fit_width, headline,  # noqa: E402
                                 rule_examples, skimage_photo)


def make_images(folder: Path, n: int = 32, width: int = 512) -> list[Path]:
    """n JPEGs at `width` px: every other one carries a headline."""
    paths = []
    for i in range(n):
        im = fit_width(skimage_photo(PHOTOS[(i // 2) % 12]), width)
        if i % 2:
            im = headline(im, HEADLINES[i % len(HEADLINES)], style=i)
        paths.append(folder / f"img{i:03d}.jpg")
        im.save(paths[-1], quality=90)
    return paths


def throughput(paths, workers: int, folder: Path) -> float:
    cache = folder / f"cache-{workers}.jsonl"
    cache.unlink(missing_ok=True)
    t0 = time.perf_counter()
    check_images(paths, cache, workers=workers, batch_size=4, desc=f"{workers} worker(s)")
    return len(paths) / (time.perf_counter() - t0)


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_speedup(n: int = 4_000_000) -> float:
    """Wall-time gain of 2 processes over 1 on four equal CPU-bound jobs."""
    from multiprocessing import get_context

    t0 = time.perf_counter()
    for _ in range(4):
        _burn(n)
    one = time.perf_counter() - t0
    with get_context("fork").Pool(2) as pool:
        t0 = time.perf_counter()
        pool.map(_burn, [n] * 4)
        two = time.perf_counter() - t0
    return one / two


def run(n: int = 32) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_images(folder, n)
        check_images(paths[:2], folder / "warm.jsonl", workers=1)  # page cache, tesseract's model
        one = throughput(paths, 1, folder)
        two = throughput(paths, 2, folder)
    return {"ocr_speedup": two / one, "ocr_images_per_s_1": one, "ocr_images_per_s_2": two, "images": n,
            "cpus": os.cpu_count(), "cpu_speedup_2": cpu_speedup()}


def rule_figures(workers: int = 2) -> dict:
    """How many images of each kind the default rule flags, and the scores behind it."""
    rule = TextRule()
    examples = rule_examples()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, im, _ in examples:
            paths.append(Path(tmp) / f"{name}.png")
            im.save(paths[-1])
        results, _ = check_images(paths, Path(tmp) / "cache.jsonl", workers=workers)
    groups: dict[str, list] = {}
    for (name, _, has_text), p in zip(examples, paths):
        kind = "page" if name == "page" else ("headline" if has_text else "photo")
        width = name.rsplit("@", 1)[-1] if "@" in name else "-"
        groups.setdefault(f"{kind} @{width}", []).append((name, rule.score(results[str(p)].get("ocr"))))
    out = {}
    for kind, items in groups.items():
        scores = [s for _, s in items]
        flagged = sum(s >= rule.char_threshold for s in scores)
        out[kind] = {"flagged": flagged, "of": len(items), "max_score": max(scores), "min_score": min(scores)}
        print(f"{kind:16s} flagged {flagged:2d} of {len(items):2d}   scores {min(scores)}..{max(scores)}")
        missed = [n for n, s in items if (s >= rule.char_threshold) != kind.startswith(("page", "headline"))]
        if missed:
            print(f"{'':16s} wrong: {', '.join(missed)}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rule", action="store_true", help="print the text rule's figures instead of the speed")
    p.add_argument("--n", type=int, default=32, help="images for the speed test (default 32)")
    a = p.parse_args(argv)
    if a.rule:
        rule_figures()
        return
    for k, v in run(a.n).items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
