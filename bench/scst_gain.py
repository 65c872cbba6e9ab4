"""Does SCST raise CIDEr? The cross-entropy model against SCST runs from it, on large held-out splits.

    make demo && python bench/scst_gain.py        # about 3 minutes on 2 cores

The demo's test split (251 images) moves by about +-0.15 CIDEr when a handful of captions change, more
than SCST changes a converged tiny model. This script draws fresh synthetic validation and test
splits (VALID and TEST images, seeds the demo never used), captions them with the XE model, runs
task1/vit_gpt2_finetuned_RL.py from it once per seed (the demo's SCST settings unless given after
`--`), and reports, with the same greedy decoding on both sides:
  - test CIDEr and BLEU-4 of each run, and the mean and standard deviation over seeds;
  - a paired bootstrap over test images of each run's CIDEr change (95% interval): the images are
    the same on both sides, so image-to-image spread cancels out.
The best epoch of each SCST run is chosen on the large validation split, never on the test split.
Writes OUT/SCST.md and OUT/scst_gain.json.

    python bench/scst_gain.py --seeds 0 1 2 -- --lr 2e-4 --baseline mean --samples 8
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def held_out_data(out: Path, train_dir: Path, images_dir: Path, valid: int, test: int) -> Path:
    """OUT/data: the XE run's training CSV (its images copied), and fresh synthetic valid and test splits.
    OUT/data/drawn.json, written last, records the settings; a later run with the same ones reuses the data."""
    import pandas as pd

    from captioning.config import UserError
    from captioning.data import read_csv, resolve_image
    from captioning.synthetic import make_dataset

    data, marker = out / "data", out / "data" / "drawn.json"
    settings = {"data_dir": str(train_dir.resolve()), "images_dir": str(images_dir.resolve()), "valid": valid,
                "test": test}
    if marker.exists():
        if json.loads(marker.read_text()) == settings:
            return data  # drawn by an earlier run into this OUT: the same images again
        raise UserError(f"{out} holds held-out data drawn with other settings ({marker}); "
                        "pass another --out.")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already holds files this script did not finish writing (no {marker}); "
                        "pass another --out, or delete it if it is an interrupted earlier run.")
    if not (train_dir / "train_data.csv").exists():
        raise UserError(f"{train_dir / 'train_data.csv'} not found: pass --data-dir (the XE run's data; "
                        "run `make demo` first for the default).")
    if not images_dir.is_dir():
        raise UserError(f"{images_dir} is not a folder: pass --images-dir (the XE run's training images).")
    images = data / "images"
    images.mkdir(parents=True, exist_ok=True)
    train = read_csv(train_dir / "train_data.csv", required=("Title", "Image_Name"))
    found = [src for src in (resolve_image(images_dir, name) for name in train["Image_Name"]) if src is not None]
    if not found:
        raise UserError(f"none of the images named in {train_dir / 'train_data.csv'} is in {images_dir}.")
    for src in found:
        shutil.copy2(src, images / src.name)
    train.to_csv(data / "train_data.csv", index=False)
    for split, n, seed in (("valid", valid, 1001), ("test", test, 1002)):
        drawn = out / f"drawn-{split}"
        make_dataset(drawn, n, seed, dirty=False)  # image names carry the seed: no clash with the demo's
        rows = pd.concat([pd.read_csv(drawn / f"{s}_data.csv") for s in ("train", "valid", "test")])
        for name in rows["Image_Name"]:
            shutil.move(drawn / "images" / f"{name}.jpg", images / f"{name}.jpg")
        rows.to_csv(data / f"{split}_data.csv", index=False)
        shutil.rmtree(drawn)
    marker.write_text(json.dumps(settings))
    return data


def per_image_cider(run: Path):
    """pycocoevalcap CIDEr of each test caption of a run (the corpus score is their mean)."""
    import numpy as np
    from pycocoevalcap.cider.cider import Cider

    from captioning.metrics import read_predictions, tokenize

    predictions, references = read_predictions(run / "predictions.csv")
    gts, res = tokenize(predictions, references)
    return np.asarray(Cider().compute_score(gts, res)[1], dtype=float)


def paired_bootstrap(diff, draws: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of `diff` (per-image changes) over resampled test sets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run(xe: Path, data_dir: Path, images_dir: Path, out: Path, seeds, valid: int, test: int, scst_args) -> dict:
    import numpy as np
    import torch

    from demo import TINY_SCST, load_script

    torch.set_num_threads(1)  # tiny models: see demo.py --threads
    data = held_out_data(out, data_dir, images_dir, valid, test)
    common = ["--data-dir", str(data), "--images-dir", str(data / "images"), "--cache-dir", str(out / "cache"),
              "--overwrite", "--preset", "greedy", "--workers", "0"]
    quiet = contextlib.redirect_stdout(io.StringIO())
    print(f"captioning {valid} + {test} held-out images with the XE model {xe} ...", flush=True)
    with quiet:
        xe_metrics = load_script("task1/task1_1.py").main(["--model", str(xe), "--output-dir", str(out / "xe"),
                                                           *common])
    xe_scores = per_image_cider(out / "xe")
    rl = load_script("task1/vit_gpt2_finetuned_RL.py")
    settings = list(scst_args) or list(TINY_SCST)
    runs, diffs = [], []
    for seed in seeds:
        print(f"SCST seed {seed}: {' '.join(settings)} ...", flush=True)
        t0 = time.time()
        with contextlib.redirect_stdout(io.StringIO()):
            m = rl.main(["--model", str(xe), "--output-dir", str(out / f"scst-seed{seed}"), "--seed", str(seed),
                         *common, *settings])
        diff = per_image_cider(out / f"scst-seed{seed}") - xe_scores
        diffs.append(diff)
        low, high = paired_bootstrap(diff)
        runs.append({"seed": seed, "test": m["test"], "valid": m["valid"], "change": float(diff.mean()),
                     "interval": [low, high], "images_better": int((diff > 0).sum()),
                     "images_worse": int((diff < 0).sum()), "seconds": time.time() - t0})
        print(f"  test CIDEr {xe_metrics['test']['CIDEr']:.3f} -> {m['test']['CIDEr']:.3f} "
              f"(paired 95% interval of the change {low:+.3f} .. {high:+.3f})", flush=True)
    changes = np.array([r["change"] for r in runs])
    # the procedure's expected change: each image's change averaged over the seeds, resampled over images
    pooled = paired_bootstrap(np.mean(diffs, 0))
    return {"xe_model": str(xe), "xe": xe_metrics, "scst_settings": settings, "valid_images": valid,
            "test_images": test, "runs": runs, "mean_change": float(changes.mean()),
            "sd_change": float(changes.std(ddof=1)) if len(changes) > 1 else 0.0, "mean_interval": list(pooled),
            "seeds_better": int((changes > 0).sum())}


def report(res: dict) -> str:
    xe = res["xe"]["test"]
    lines = ["# SCST after cross-entropy: test CIDEr on large held-out synthetic splits", "",
             f"`python bench/scst_gain.py` from `{res['xe_model']}`; {res['valid_images']} validation and "
             f"{res['test_images']} test images drawn fresh; greedy decoding on both sides; SCST settings "
             f"`{' '.join(res['scst_settings'])}`.", "",
             "| run | test CIDEr | test BLEU-4 | valid CIDEr | change in test CIDEr (paired 95% interval) "
             "| images better / worse |", "|---|---:|---:|---:|---|---:|",
             f"| cross-entropy (start) | {xe['CIDEr']:.3f} | {xe['BLEU-4']:.3f} | {res['xe']['valid']['CIDEr']:.3f} "
             "| - | - |"]
    for r in res["runs"]:
        lo, hi = r["interval"]
        lines.append(f"| SCST seed {r['seed']} | {r['test']['CIDEr']:.3f} | {r['test']['BLEU-4']:.3f} | "
                     f"{r['valid']['CIDEr']:.3f} | {r['change']:+.3f} ({lo:+.3f} .. {hi:+.3f}) | "
                     f"{r['images_better']} / {r['images_worse']} |")
    lo, hi = res["mean_interval"]
    lines += ["", f"Mean change over {len(res['runs'])} seeds: {res['mean_change']:+.3f} (sd {res['sd_change']:.3f}; "
              f"paired 95% interval over test images of the seed-averaged change {lo:+.3f} .. {hi:+.3f}); "
              f"test CIDEr rose in {res['seeds_better']} of {len(res['runs'])} seeds.", ""]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    scst_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--xe", default="demo_runs/vit_gpt2_finetuned/best", help="the cross-entropy model SCST starts from")
    p.add_argument("--data-dir", default="demo_runs/cleaning", help="folder with that model's train_data.csv")
    p.add_argument("--images-dir", default="demo_runs/data/images", help="its training images")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one SCST run per seed (default 0 1 2)")
    p.add_argument("--valid", type=int, default=2000, help="held-out validation images to draw (default 2000)")
    p.add_argument("--test", type=int, default=10000, help="held-out test images to draw (default 10000)")
    # not under demo_runs: the demo's report would list these runs beside its own
    p.add_argument("--out", default="runs/scst_gain", help="output folder (default runs/scst_gain)")
    a = p.parse_args(argv)
    from captioning.config import UserError

    if not Path(a.xe).is_dir():
        raise UserError(f"{a.xe} is not a model folder: run `make demo` first, or pass --xe.")
    if a.valid < 10 or a.test < 10:
        raise UserError("--valid and --test must be at least 10 images.")
    out = Path(a.out)
    res = run(Path(a.xe), Path(a.data_dir), Path(a.images_dir), out, a.seeds, a.valid, a.test, scst_args)
    (out / "scst_gain.json").write_text(json.dumps(res, indent=2))
    (out / "SCST.md").write_text(report(res))
    print("\n" + report(res) + f"written: {out / 'SCST.md'}")


if __name__ == "__main__":
    from captioning.config import run_main

    run_main(main)
