"""Clean a captioning dataset: drop images with printed text, corrupt, blank or missing images,
bad titles, and duplicate photos; write the kept rows as a new dataset folder.

Reads DATA_DIR/{train,valid,test}_data.csv and writes the same layout into OUT, plus
OUT/cleaning_report.csv (one row per removed or flagged row: split, Image_Name, Title, reason,
action, detail) and OUT/summary.json. Reasons: text, corrupt, blank, missing, bad title, unsafe
name, duplicate. The input CSVs and images are never modified. Every image is checked once
(decode, blank test, perceptual hash, OCR) in a pool of --workers processes, and each result is
cached in OUT/image_checks.jsonl, so a killed run resumes without redoing finished images and
ends with the same output. The text rule and how its defaults were chosen: captioning/cleaning.py.

A photo found in two splits (train/test leakage) is kept only in the held-out split (test, else
valid) whatever --duplicates says, so no test photo is also trained on.

    python imageCleaning/preprocess.py --data-dir data --out data_clean --workers 2
"""

import json
import os
import shlex
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from captioning.cleaning import CHAR_THRESHOLD, MIN_CONFIDENCE, TextRule, check_images, duplicate_groups
from captioning.config import DataConfig, UserError, choice, parse_config, run_main, to_dict
from captioning.data import SPLITS, clean_rows, data_folders, log, read_csv, split_csv

REPORT_COLUMNS = ["split", "Image_Name", "Title", "reason", "action", "detail"]
ROW_REASONS = {"empty Image_Name": "missing", "missing image": "missing", "unsafe image name": "unsafe name",
               "image outside the images folder": "unsafe name", "empty title": "bad title",
               "#NAME? title": "bad title", "duplicate row": "duplicate"}


@dataclass
class Config(DataConfig):
    # Output folder: cleaned CSVs, cleaning_report.csv, summary.json, the check cache (never DATA_DIR)
    out: str = "data_clean"
    # Processes for decoding and OCR (tesseract runs single-threaded in each)
    workers: int = 2
    # An image is text when its confident word-like runs hold at least this many letters
    char_threshold: int = CHAR_THRESHOLD
    # Tesseract confidence (0-100) a token needs to count towards the letters above
    min_confidence: float = MIN_CONFIDENCE
    # Read text with tesseract (--no-ocr keeps only the corrupt/blank/missing/duplicate checks)
    ocr: bool = True
    # Duplicate photos inside one split:
    #   "keep-first" keep the first row of each group
    #   "merge"      keep the first row; its References column lists every distinct title of the group
    #   "keep-all"   keep every row and only report the group
    duplicates: str = choice("keep-first", "merge", "keep-all")
    # Perceptual-hash bits (of 64) in which two copies of one photo may differ
    hash_distance: int = 8
    # ... and how far their 8x8 colour thumbnails may differ (mean absolute difference, 0-255)
    pixel_difference: float = 4.0
    # Also copy the kept images into OUT/images, making OUT a self-contained dataset folder
    copy_images: bool = False
    # Most images per tesseract call (larger: less start-up cost; smaller: less redone after a kill)
    ocr_batch: int = 64
    # Cache folder (with --dataset: where the dataset is laid out; empty: $FOODCAP_CACHE or ~/.cache/foodcap)
    cache_dir: str = ""


def entry(split, rec_or_row, reason, action, detail) -> dict:
    row = rec_or_row if isinstance(rec_or_row, dict) else rec_or_row.row
    return {"split": split, "Image_Name": str(row.get("Image_Name", "")), "Title": str(row.get("Title", "")),
            "reason": reason, "action": action, "detail": detail}


def resolve_duplicates(group: list, mode: str, report: list) -> set:
    """group: [(split, record)] of one photo, in split and row order. Returns the ids of rows to drop."""
    names = [f"{s}/{r.image_name}" for s, r in group]
    held_out = max({s for s, _ in group}, key=SPLITS.index)
    first = next(i for i, (s, _) in enumerate(group) if s == held_out)
    titles = list(dict.fromkeys(group[first][1].references + [t for _, r in group for t in r.references]))
    drop = set()
    for i, (split, rec) in enumerate(group):
        others = ", ".join(n for j, n in enumerate(names) if j != i)
        if split != held_out:
            action, detail = "removed", f"train/test leakage: same photo as {others}; kept in {held_out}"
        elif i == first or mode == "keep-all":
            action, detail = "kept", f"same photo as {others}"
            if mode == "merge" and i == first:
                rec.row["References"] = json.dumps(titles)
                action, detail = "merged", f"{detail}; references: {' | '.join(titles)}"
        else:
            action, detail = "removed", f"same photo as {others}; kept {names[first]}"
        if action == "removed":
            drop.add(id(rec))
        report.append(entry(split, rec, "duplicate", action, detail))
    return drop


def write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def check_out(cfg, data: Path, images: Path, out: Path) -> None:
    if out.resolve() in (data.resolve(), images.resolve()):
        raise UserError(f"--out {out} is an input folder; cleaning writes a new one, never over its input.")
    ours = (out / "cleaning_report.csv").exists() or (out / "image_checks.jsonl").exists()
    if not ours and any(split_csv(out, s).exists() for s in SPLITS):
        raise UserError(f"{out} already holds split CSVs that preprocess did not write; choose a new --out.")
    if cfg.copy_images and (out / "images").is_symlink():
        raise UserError(f"{out / 'images'} is a symlink; --copy-images only writes into a real folder.")


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__, prog="imageCleaning/preprocess.py")
    (data, images), out = data_folders(cfg), Path(cfg.out)
    if not data.is_dir():
        raise UserError(f"data folder {data} does not exist.")
    if not images.is_dir():
        raise UserError(f"images folder {images} does not exist (set --images-dir).")
    if cfg.workers < 1 or cfg.ocr_batch < 1:
        raise UserError("--workers and --ocr-batch must be at least 1.")
    if not 0 <= cfg.hash_distance <= 64 or cfg.pixel_difference < 0:
        raise UserError("--hash-distance must be 0..64 and --pixel-difference at least 0.")
    frames = {s: read_csv(split_csv(data, s)) for s in SPLITS}
    check_out(cfg, data, images, out)
    out.mkdir(parents=True, exist_ok=True)

    report, records = [], {}
    for s, df in frames.items():
        dropped = []
        records[s], _ = clean_rows(df, images, where=f"{s}: ", dropped=dropped)
        report += [entry(s, row, ROW_REASONS.get(why, why), "removed", why) for row, why in dropped]
    paths = sorted({str(r.path) for recs in records.values() for r in recs})
    if not paths and any(len(df) for df in frames.values()):
        raise UserError(f"none of the images named in {data}'s CSVs is in {images} (set --images-dir).")
    results, cached = check_images(paths, out / "image_checks.jsonl", cfg.workers, cfg.ocr_batch, cfg.ocr)

    rule, usable = TextRule(cfg.min_confidence, cfg.char_threshold), []
    for s in SPLITS:
        for rec in records[s]:
            res = results[str(rec.path)]
            if res["status"] != "ok":
                report.append(entry(s, rec, res["status"], "removed", res["detail"]))
            elif cfg.ocr and rule.is_text(res.get("ocr")):
                words = " ".join(rule.words(res["ocr"]))
                detail = f"read {rule.score(res['ocr'])} letters: {words[:80]}"
                report.append(entry(s, rec, "text", "removed", detail))
            else:
                usable.append((s, rec))

    hashes = {str(r.path): (results[str(r.path)]["phash"], results[str(r.path)]["thumb"]) for _, r in usable}
    group_of = {p: p for p in hashes}
    for g in duplicate_groups(hashes, cfg.hash_distance, cfg.pixel_difference):
        group_of.update({p: g[0] for p in g})
    groups: dict[str, list] = {}
    for s, rec in usable:
        groups.setdefault(group_of[str(rec.path)], []).append((s, rec))
    drop, leaks = set(), 0
    for group in groups.values():
        if len(group) > 1:
            drop |= resolve_duplicates(group, cfg.duplicates, report)
            leaks += len({s for s, _ in group}) > 1

    kept = {s: [rec for t, rec in usable if t == s and id(rec) not in drop] for s in SPLITS}
    for s in SPLITS:
        columns = list(frames[s].columns) + (["References"] if cfg.duplicates == "merge"
                                             and "References" not in frames[s].columns else [])
        rows = [{**dict.fromkeys(columns, ""), **r.row} for r in kept[s]]
        write_csv(pd.DataFrame(rows, columns=columns), split_csv(out, s))
    order = {s: i for i, s in enumerate(SPLITS)}
    report.sort(key=lambda e: (order[e["split"]], e["reason"], e["Image_Name"], e["action"]))
    write_csv(pd.DataFrame(report, columns=REPORT_COLUMNS), out / "cleaning_report.csv")
    if cfg.copy_images:
        copy_kept(kept, out / "images")
    elif cfg.dataset and not (out / "images").exists():  # OUT then works alone: --data-dir OUT
        (out / "images").symlink_to(images.resolve(), target_is_directory=True)

    summary = {"rows_in": {s: len(frames[s]) for s in SPLITS}, "rows_kept": {s: len(kept[s]) for s in SPLITS},
               "removed": dict(Counter(e["reason"] for e in report if e["action"] == "removed")),
               "flagged": dict(Counter(e["reason"] for e in report if e["action"] != "removed")),
               "leakage_groups": leaks, "config": to_dict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary, out, cached, len(paths))
    if not (out / "images").exists():
        where = f"--data-dir {shlex.quote(str(out))} --images-dir {shlex.quote(str(images))}"
        print(f"  next: every script with {where}")
    return summary


def copy_kept(kept: dict, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    for recs in kept.values():
        for r in recs:
            target = folder / r.path.name
            if not target.exists() or target.stat().st_size != r.path.stat().st_size:
                shutil.copy2(r.path, target)


def print_summary(summary: dict, out: Path, cached: int, n_images: int) -> None:
    kept, rows_in = summary["rows_kept"], summary["rows_in"]
    print(f"cleaning: kept {sum(kept.values())} of {sum(rows_in.values())} rows "
          f"({', '.join(f'{s} {kept[s]}' for s in SPLITS)}) -> {out}")
    for what in ("removed", "flagged"):
        counts = summary[what]
        label = "removed" if what == "removed" else "flagged, kept"
        print(f"  {label}: " + (", ".join(f"{r} {n}" for r, n in sorted(counts.items())) or "none"))
    if summary["leakage_groups"]:
        n = summary["leakage_groups"]
        print(f"  train/test leakage: {n} photo(s) in two splits, kept only in the held-out one")
    if cached:
        log(f"  {cached} of {n_images} image checks came from {out / 'image_checks.jsonl'}")
    print(f"  report: {out / 'cleaning_report.csv'}")


if __name__ == "__main__":
    run_main(main)
