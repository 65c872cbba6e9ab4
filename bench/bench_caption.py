"""The caption command: batched against one image at a time, and its memory on a 10,000-image folder.

    python bench/bench_caption.py [--quick] [--json out.json]

Speed: `python -m captioning.caption`'s code (captioning.caption.caption_paths over load_captioner)
captions JPEGs (274x169, the Kaggle photos' size) at --batch-size 32 (32 images) and at --batch-size 1
(the first 8), back to back, with a random-weight ViT-GPT2 at the real widths of bench_train (ViT-B:
224 px, patch 16, width 768, 12 heads; GPT-2 width 768, vocabulary 50257; 2 + 2 layers) and 24 new
tokens, with the model's own preset (beam, 4 beams: a hub checkpoint's) and with greedy (the demo runs'
preset). Each size gets one warm-up call, then 3 alternating rounds, and each side counts its best round
(one batched call takes ~5 s, and this machine's speed moves by 10-20% between two such calls).
Target: batched >= 5x the images per second.
Memory: the same code over a folder of 10,000 small PNGs with a tiny model: the process's RSS, sampled
every 20 ms, grows no more than over 1,000 (images are decoded one batch at a time).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def images_per_second(captioner, paths, batch_size: int) -> tuple[float, dict]:
    from captioning.caption import caption_paths

    t0 = time.perf_counter()
    out = caption_paths([captioner], paths, batch_size=batch_size, echo=lambda s: None, progress=False)
    return len(paths) / (time.perf_counter() - t0), out["titles"]


def speed(tmp: Path, n: int, n1: int, quick: bool, log=print, rounds: int = 3) -> dict:
    """Images/s at batch 32 (n images) and one at a time (the first n1 of them), for the model's own preset
    (beam: a hub checkpoint has no manifest) and for greedy (what the demo's runs record)."""
    import bench_train

    from captioning.captioner import load_captioner

    size = bench_train.QUICK if quick else bench_train.Size(train=0, valid=0, eval=n)
    titles = bench_train.make_photos(tmp / "data", size)
    model = bench_train.build_model(tmp / "model", size, titles)
    captioner = load_captioner(str(model))
    captioner.max_new_tokens = size.max_new_tokens
    paths = sorted(str(p) for p in (tmp / "data" / "images").glob("eval-test-*.jpg"))
    res = {"images_batched": len(paths), "images_one_at_a_time": min(n1, len(paths)),
           "max_new_tokens": captioner.max_new_tokens,
           "size": {k: getattr(size, k) for k in ("image", "patch", "width", "enc_layers", "dec_layers", "vocab")}}
    for preset in (captioner.preset, "greedy"):
        captioner.preset = preset
        # a warm-up of each measured size (a size's first call pays allocation and kernel choice, which a
        # folder of many batches pays once), then `rounds` alternating rounds; each side counts its best
        images_per_second(captioner, paths[:1], 1)
        images_per_second(captioner, paths, 32)
        log(f"  {preset}: {res['images_one_at_a_time']} images one at a time, {len(paths)} at batch 32, "
            f"best of {rounds} ...")
        ones, batches = [], []
        for _ in range(rounds):
            one, t1 = images_per_second(captioner, paths[:n1], 1)
            batched, t32 = images_per_second(captioner, paths, 32)
            ones.append(one)
            batches.append(batched)
        one, batched = max(ones), max(batches)
        log(f"    {one:.2f} -> {batched:.2f} images/s: {batched / one:.2f}x (rounds: "
            f"{', '.join(f'{a:.2f} -> {b:.2f}' for a, b in zip(ones, batches))})")
        res[preset] = {"images_per_second_1": one, "images_per_second_32": batched, "speedup": batched / one,
                       "rounds_1": ones, "rounds_32": batches,
                       "same_titles": all(t32[p] == t for p, t in t1.items())}
    res["caption_batch_speedup"] = res["beam"]["speedup"]  # the headline: a hub checkpoint's own preset
    res["caption_batch_speedup_greedy"] = res["greedy"]["speedup"]
    return res


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the peak so far


def peak_rss_during(fn):
    """(fn(), the highest RSS in MB seen every 20 ms while it ran)."""
    import threading

    peak, done = [rss_mb()], threading.Event()

    def watch():
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_mb())

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        return fn(), max(peak[0], rss_mb())
    finally:
        done.set()
        t.join()


def memory(tmp: Path, n: int, log=print) -> dict:
    """Peak RSS growth over a folder of n and of n // 10 small PNGs (a tiny model: memory, not speed)."""
    from PIL import Image

    from captioning.caption import caption_paths
    from captioning.captioner import load_captioner
    from captioning.synthetic import build_tiny_vit_gpt2, train_tokenizer

    model = tmp / "tiny"
    build_tiny_vit_gpt2(model, train_tokenizer(["a red dish", "two green bowls"] * 20, vocab_size=300))
    captioner = load_captioner(str(model))
    captioner.preset, captioner.max_new_tokens = "greedy", 2
    src = tmp / "src.png"
    Image.new("RGB", (64, 64), (180, 90, 30)).save(src)
    res = {}
    for count in (n // 10, n):
        folder = tmp / f"folder-{count}"
        folder.mkdir()
        for i in range(count):
            os.link(src, folder / f"{i:05d}.png")
        before = rss_mb()
        t0 = time.perf_counter()
        out, peak = peak_rss_during(lambda: caption_paths([captioner], [str(folder)], batch_size=32,
                                                          echo=lambda s: None, progress=False))
        res[count] = {"captioned": out["captioned"], "seconds": time.perf_counter() - t0,
                      "rss_before_mb": before, "peak_rss_mb": peak, "peak_rss_growth_mb": peak - before}
        log(f"  {count} images: peak RSS {res[count]['peak_rss_mb']:.0f} MB "
            f"(+{res[count]['peak_rss_growth_mb']:.0f} MB), {res[count]['seconds']:.1f} s")
    return {"folders": res, "rss_growth_mb_large": res[n]["peak_rss_growth_mb"]}


def run(quick: bool = False, n: int = 32, n1: int = 8, folder_images: int = 10_000, log=print) -> dict:
    from captioning.config import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="bench-caption-") as tmp:
        tmp = Path(tmp)
        res = speed(tmp, n, n1, quick, log)
        res["memory"] = memory(tmp, 200 if quick else folder_images, log)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the plumbing, not the speed")
    p.add_argument("--json", help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    res = run(quick=a.quick)
    print(f"caption command, batch 32 against one at a time: beam {res['caption_batch_speedup']:.2f}x, greedy "
          f"{res['caption_batch_speedup_greedy']:.2f}x (target >= 5x); "
          f"10,000-image folder: peak RSS +{res['memory']['rss_growth_mb_large']:.0f} MB")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
