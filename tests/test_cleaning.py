"""imageCleaning/preprocess.py and captioning.cleaning: the text rule on real photos, every dirty
entry of the synthetic data, duplicate modes, resume after a kill, clean failures."""
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from captioning import synthetic
from captioning.cleaning import TextRule, check_images, duplicate_groups, fit_width, headline, skimage_photo
from captioning.data import load_split
from conftest import ROOT, assert_clean_failure, run_cli

SCRIPT = ROOT / "imageCleaning" / "preprocess.py"
OUTPUTS = ("train_data.csv", "valid_data.csv", "test_data.csv", "cleaning_report.csv")


def preprocess(*args):
    """Run the script's main() in this process (faster than a subprocess for the variants)."""
    spec = importlib.util.spec_from_file_location("preprocess", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in args])


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "models" not in p.parts}


def reuse_checks(src: Path, out: Path) -> Path:
    """A new output folder that starts from src's image-check cache (skips the OCR already done)."""
    out.mkdir()
    shutil.copy(src / "image_checks.jsonl", out / "image_checks.jsonl")
    return out


@pytest.fixture(scope="module")
def cleaned(synth, tmp_path_factory):
    """The synthetic dataset cleaned once through the command line; the input's digest before."""
    before = tree_digest(synth)
    out = tmp_path_factory.mktemp("cleaned") / "out"
    proc = run_cli(SCRIPT, "--data-dir", synth, "--out", out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, before


# ---------------------------------------------------------------------------------- the text rule
def test_text_rule_on_real_photos_printed_page_and_headlines(tmp_path):
    photos = ["astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "gravel", "immunohistochemistry"]
    images = {f"{n}": (fit_width(skimage_photo(n), 274), False) for n in photos}
    images["page"] = (skimage_photo("page"), True)
    for i, (base, words) in enumerate([("coffee", "Chocolate Cake"), ("rocket", "Holiday Cookies"),
                                       ("chelsea", "Summer Salads"), ("gravel", "Easy Dinners")]):
        style = (2, 5)[i % 2]  # words in a box: the case the rule is tuned to catch every time
        photo = fit_width(skimage_photo(base), 512 if i < 2 else 274)
        images[f"{base}+text"] = (headline(photo, words, style), True)
    paths = {}
    for name, (im, _) in images.items():
        paths[name] = tmp_path / f"{name}.jpg"
        im.save(paths[name], quality=90)
    results, _ = check_images(list(paths.values()), tmp_path / "cache.jsonl", workers=2)
    rule = TextRule()
    scores = {n: rule.score(results[str(p)]["ocr"]) for n, p in paths.items()}
    flagged = {n for n, s in scores.items() if s >= rule.char_threshold}
    assert flagged == {n for n, (_, text) in images.items() if text}, scores
    assert all(scores[n] == 0 for n in photos), scores  # a wide margin, not a near miss


def test_rule_counts_confident_word_runs_of_the_best_view():
    rule = TextRule(min_confidence=70, char_threshold=10)
    noise = {"grey": [["aN", 95], ["Vay", 61], ["=", 90], ["ag", 88]], "light": [["Re", 82]]}
    assert rule.score(noise) == 0  # short or unsure tokens from texture never count
    glued = {"grey": [["Holiday.Cookies", 91]], "dark": [["Holiday", 40]]}
    assert rule.words(glued) == ["Holiday", "Cookies"] and rule.is_text(glued)
    spread = {"grey": [["Lemon", 90]], "light": [["Lemon", 90]], "dark": [["Lemon", 90]]}
    assert rule.score(spread) == 5 and not rule.is_text(spread)  # the best view counts, not the sum


def test_duplicate_groups_need_hash_and_pixels_to_agree():
    rng = np.random.default_rng(7)
    dishes = [synthetic.draw_dish(rng)[0] for _ in range(300)]
    buf = io.BytesIO()
    dishes[5].save(buf, "JPEG", quality=70)
    copy = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    import imagehash
    from captioning.cleaning import thumbnail

    items = {i: (str(imagehash.phash(im)), thumbnail(im).tobytes().hex())
             for i, im in enumerate(dishes + [copy])}
    assert duplicate_groups(items) == [[5, 300]]
    hash_only = duplicate_groups(items, max_pixel_diff=255)  # simple drawings collide on the hash alone
    assert sum(len(g) for g in hash_only) > 2


# ------------------------------------------------------------------------- the synthetic dataset
def test_every_dirty_entry_is_caught_with_its_reason(cleaned, synth):
    out, proc, before = cleaned
    report = pd.read_csv(out / "cleaning_report.csv", dtype=str, keep_default_na=False)
    dirty = json.loads((synth / "dirty_entries.json").read_text())
    assert len(dirty) >= 10
    for d in dirty:
        rows = report[(report.split == d["split"]) & (report.Image_Name == d["Image_Name"])]
        assert list(rows.reason) == [d["reason"]], (d, rows.to_dict("records"))
    removed = set(report[report.action == "removed"].Image_Name)
    kept = {s: set(pd.read_csv(out / f"{s}_data.csv", dtype=str).Image_Name)
            for s in ("train", "valid", "test")}
    assert not removed & set().union(*kept.values())
    # one copy of each duplicate pair stays; the leaked photo stays in test only
    assert ("zz-dup-a" in kept["train"]) != ("zz-dup-b" in kept["train"])
    assert "zz-leak-test" in kept["test"] and "zz-leak-train" not in kept["train"]
    assert "train/test leakage" in report[report.Image_Name == "zz-leak-train"].detail.item()
    # the clean images all survive, the input is untouched, the counts are printed
    assert sum(map(len, kept.values())) == 160 + 2
    assert tree_digest(synth) == before
    assert "removed: bad title 2, blank 1, corrupt 1, duplicate 2, missing 1, text 1" in proc.stdout


def test_merge_and_keep_all_duplicates(cleaned, synth, tmp_path):
    out = cleaned[0]
    merged = reuse_checks(out, tmp_path / "merge")
    preprocess("--data-dir", synth, "--out", merged, "--duplicates", "merge")
    train, _ = load_split(merged, "train", synth / "images")
    dup = {r.image_name: r for r in train}
    assert "zz-dup-b" not in dup and dup["zz-dup-a"].references[1:] == ["Leftovers on a Plate"]
    test, _ = load_split(merged, "test", synth / "images")
    leak = next(r for r in test if r.image_name == "zz-leak-test")
    assert leak.references[0] == "Snack on a Plate" and len(leak.references) == 2

    keep_all = reuse_checks(out, tmp_path / "keep-all")
    summary = preprocess("--data-dir", synth, "--out", keep_all, "--duplicates", "keep-all")
    names = set(pd.read_csv(keep_all / "train_data.csv", dtype=str).Image_Name)
    assert {"zz-dup-a", "zz-dup-b"} <= names and "zz-leak-train" not in names  # leakage is always resolved
    assert summary["removed"]["duplicate"] == 1 and summary["leakage_groups"] == 1


def test_copy_images_makes_a_self_contained_folder(cleaned, synth, tmp_path):
    out = reuse_checks(cleaned[0], tmp_path / "copy")
    preprocess("--data-dir", synth, "--out", out, "--copy-images")
    for split in ("train", "valid", "test"):
        records, skips = load_split(out, split)  # default images folder: OUT/images
        assert records and not skips
        for r in records[:5]:
            assert r.path.read_bytes() == (synth / "images" / r.path.name).read_bytes()


def test_killed_run_resumes_without_redoing_and_ends_identical(cleaned, synth, tmp_path):
    out = tmp_path / "killed"
    cache = out / "image_checks.jsonl"
    cmd = [sys.executable, str(SCRIPT), "--data-dir", str(synth), "--out", str(out), "--workers", "1",
           "--ocr-batch", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cache.exists() and cache.read_text().count("\n") >= 10:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run: the script and its tesseract child
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = cache.read_text().count("\n")
    assert 10 <= done_before < 150 and not (out / "cleaning_report.csv").exists()

    # resumed with other settings (2 workers, default batches): the output must not depend on them
    again = run_cli(SCRIPT, "--data-dir", synth, "--out", out, "--workers", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{done_before} of" in again.stderr  # the finished checks came from the cache ...
    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys))  # ... and none was done twice
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (cleaned[0] / name).read_bytes(), name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, cleaned[0]))
    assert {k: v for k, v in a.items() if k != "config"} == {k: v for k, v in b.items() if k != "config"}


def test_unsafe_names_are_reported_and_never_opened(synth, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth, data, ignore=shutil.ignore_patterns("models", "images"))
    (tmp_path / "secret.jpg").write_bytes((synth / "images" / "zz-dup-a.jpg").read_bytes())
    train = pd.read_csv(data / "train_data.csv", dtype=str, keep_default_na=False)
    evil = pd.DataFrame({"Title": ["Stolen", "Stolen too"], "Image_Name": ["../secret", str(tmp_path / "secret")]})
    pd.concat([train, evil]).to_csv(data / "train_data.csv", index=False)
    out = tmp_path / "out"
    preprocess("--data-dir", data, "--images-dir", synth / "images", "--out", out, "--no-ocr")
    report = pd.read_csv(out / "cleaning_report.csv", dtype=str, keep_default_na=False)
    assert sorted(report[report.reason == "unsafe name"].Title) == ["Stolen", "Stolen too"]
    assert "Stolen" not in set(pd.read_csv(out / "train_data.csv", dtype=str).Title)


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_fails_with_one_sentence(synth, tmp_path):
    missing = run_cli(SCRIPT, "--data-dir", tmp_path / "nope", "--out", tmp_path / "o")
    assert_clean_failure(missing, "does not exist")
    onto_input = run_cli(SCRIPT, "--data-dir", synth, "--images-dir", synth / "images", "--out", synth)
    assert_clean_failure(onto_input, "never over its input")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "train_data.csv").write_text("Title,Image_Name\nmine,keep-me\n")
    assert_clean_failure(run_cli(SCRIPT, "--data-dir", synth, "--out", foreign), "did not write")
    assert (foreign / "train_data.csv").read_text() == "Title,Image_Name\nmine,keep-me\n"
    broken = tmp_path / "broken"
    shutil.copytree(synth, broken, ignore=shutil.ignore_patterns("models", "images"))
    (broken / "valid_data.csv").write_text("Name;Picture\nx;y\n")
    assert_clean_failure(run_cli(SCRIPT, "--data-dir", broken, "--images-dir", synth / "images",
                                 "--out", tmp_path / "o2"), "Image_Name")


def test_a_failed_ocr_is_kept_but_never_cached(tmp_path, monkeypatch):
    """An image whose OCR failed (e.g. missing language data) stays in, is named in a warning, and is
    read again by the next run instead of being remembered as 'no text'."""
    from captioning import cleaning

    img = tmp_path / "dish.jpg"
    synthetic.draw_dish(np.random.default_rng(0))[0].save(img)
    cache = tmp_path / "checks.jsonl"

    def broken(pages, psm):
        raise RuntimeError("Failed loading language 'eng'")

    monkeypatch.setattr(cleaning, "run_tesseract", broken)
    results, cached = check_images([img], cache, workers=1)
    assert results[str(img)]["status"] == "ok" and "eng" in results[str(img)]["ocr_error"] and cached == 0
    assert cache.read_text() == ""
    monkeypatch.undo()
    results, cached = check_images([img], cache, workers=1)
    assert cached == 0 and "ocr_error" not in results[str(img)] and results[str(img)]["ocr"]
    assert check_images([img], cache, workers=1)[1] == 1  # a good result is cached
