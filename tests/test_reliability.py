"""Issue 8: every entry point against bad images, bad CSVs, bad arguments, faults and misuse.

What each kind of bad input gets is the table "What bad input gets" in README.md; the tests here
assert that table. Entry points run in this process (`main(argv)` through `run_main`, exactly what
their `__main__` does) unless the test needs a fresh process (environment, SIGKILL). Each run
checks: a counted, named skip or exit code 2 with one `error:` sentence, no traceback, no partial
output passed off as complete, and the input folder byte for byte unchanged."""
import errno
import importlib
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from captioning.config import run_main
from conftest import ROOT
from test_remove_images import snapshot

M = "-m "  # prefix of a `python -m captioning.*` entry point
FT, TRAIN2, DEEPSEEK = "task1/vit_gpt2_finetuned.py", "task2/train.py", "task2/deepseek.py"
SECRET = "hf_SECRETflag0123456789"
SECRET_ENV = "hf_SECRETenv9876543210"
_loaded = {}


def entry(target: str):
    """The main() of a script path (loaded as a module, as demo.load_script does) or of `-m module`."""
    if target.startswith(M):
        return importlib.import_module(target[len(M):]).main
    if target not in _loaded:
        path = ROOT / target
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        _loaded[target] = module
    return _loaded[target].main


def call(capsys, target, *argv):
    """Run an entry point as its __main__ would; (exit code, stdout, stderr)."""
    try:
        run_main(entry(target), [str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def clean_failure(result, *words):
    code, _, err = result
    assert code == 2, (code, err[-3000:])
    assert "Traceback" not in err and "error:" in err, err[-3000:]
    for w in words:
        assert w.lower() in err.lower(), (w, err[-2000:])


def no_results(out: Path):
    """A failed run leaves nothing that looks like a finished one."""
    for name in ("metrics.json", "predictions.csv", "cleaning_report.csv", "summary.json", "test_data.csv"):
        assert not (out / name).exists(), name


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------- hostile dataset
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header that claims side x side pixels (10 gigapixels) over a few bytes of data."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


ODD = ("odd-png-named.jpg", "odd-cmyk.jpg", "odd-16bit.png", "odd-palette.png", "odd-alpha.png",
       "odd-1x1.png", "odd-wide.png", "odd-tall.jpg", "odd-exif.jpg")
BROKEN = {"bad-truncated.jpg": "cannot decode", "bad-empty.jpg": "not an image",
          "bad-text.jpg": "not an image", "bad-bomb.png": "decompression bomb"}


def odd_images(seed: int = 8) -> dict:
    """Unusual but valid files (each a different drawn dish): every one must be captioned."""
    from captioning.synthetic import draw_dish

    rng = np.random.default_rng(seed)
    a, b, c, d, e, f, g, h, i = (draw_dish(rng)[0] for _ in ODD)
    exif = i.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    e = e.convert("RGBA")
    e.putalpha(128)
    files = [encoded(a, "PNG"), encoded(b.convert("CMYK"), "JPEG"),
             encoded(Image.fromarray(np.asarray(c.convert("L"), np.uint16) * 257), "PNG"),
             encoded(d.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0),
             encoded(e, "PNG"),
             encoded(f.resize((1, 1)), "PNG"), encoded(g.resize((3000, 2)), "PNG"),
             encoded(h.resize((2, 3000)), "JPEG"), encoded(i.resize((64, 32)), "JPEG", exif=exif)]
    return dict(zip(ODD, files))


def broken_images(photo: Image.Image) -> dict:
    """Files that cannot be used (their reasons: BROKEN)."""
    jpg = encoded(photo.convert("RGB").resize((128, 128)), "JPEG")
    return {"bad-truncated.jpg": jpg[: len(jpg) // 2], "bad-empty.jpg": b"",
            "bad-text.jpg": b"Title,Image_Name\nnot,a picture\n", "bad-bomb.png": bomb_png()}


ROW_SKIPS = {"unsafe image name": 2, "image outside the images folder": 1, "empty title": 1,
             "#NAME? title": 1, "duplicate row": 1}
LONG_TITLE = "Soup " * 400


@pytest.fixture(scope="module")
def hostile(synth, tmp_path_factory):
    """4 good rows per split plus, in every split, the odd images (kept), the broken images (skipped)
    and bad rows (skipped): ../ and absolute names, a symlink out of the folder, empty and NaN titles, a
    duplicate row and a 2,000-character title (kept). train_data.csv has a BOM, valid_data.csv is
    Latin-1 (with an accented title), test_data.csv is UTF-16 as Excel saves it."""
    d = tmp_path_factory.mktemp("hostile")
    images = d / "images"
    images.mkdir()
    first = next((synth / "images").glob("dish-*.jpg"))
    shutil.copy(first, d / "secret.jpg")
    (images / "bad-link-out.jpg").symlink_to(d / "secret.jpg")
    photo = Image.open(first)
    for name, raw in {**odd_images(), **broken_images(photo)}.items():
        (images / name).write_bytes(raw)
    encodings = {"train": "utf-8-sig", "valid": "latin-1", "test": "utf-16"}
    for split, encoding in encodings.items():
        df = pd.read_csv(synth / f"{split}_data.csv", dtype=str, keep_default_na=False)
        df = df[~df.Image_Name.str.startswith("zz-")].head(4)
        for name in df.Image_Name:
            shutil.copy(synth / "images" / f"{name}.jpg", images / f"{name}.jpg")
        names = list(df.Image_Name)
        rows = [(f"Odd {Path(n).stem}", Path(n).stem if i % 2 else n) for i, n in enumerate(ODD)]
        rows += [(f"Broken {Path(n).stem}", Path(n).stem) for n in BROKEN]
        rows += [("Escaped Stew", "../secret"), ("Absolute Stew", str(d / "secret.jpg")),
                 ("Linked Stew", "bad-link-out"), ("", names[0]), ("NaN", names[1]),
                 (df.Title.iloc[2], names[2]), (LONG_TITLE, names[3]), ("Crème Brûlée", names[3])]
        df = pd.concat([df, pd.DataFrame(rows, columns=["Title", "Image_Name"])], ignore_index=True)
        df.to_csv(d / f"{split}_data.csv", index=False, encoding=encoding)
    return d


@pytest.fixture(scope="module")
def untouched(hostile):
    """The hostile folder's digest; tests assert it is the same after they ran."""
    return snapshot(hostile)


def models(synth) -> dict:
    return {name: str(synth / "models" / name) for name in ("vit-gpt2", "llama", "vit", "deepseek-vl")}


def check_skips_named(err: str, splits=("valid", "test")):
    """Every broken image and every bad row is named with its reason and counted, per split."""
    for split in splits:
        line = next(x for x in err.splitlines() if x.startswith(f"{split}: skipped") and "row(s)" in x)
        for reason, n in ROW_SKIPS.items():
            assert f"{reason}: {n}" in line, (reason, line)
        images = next(x for x in err.splitlines() if x.startswith(f"{split}: skipped 4 unreadable"))
        for name, reason in BROKEN.items():
            assert f"{Path(name).stem} ({reason}" in images, (name, images)
    assert "valid_data.csv is not valid UTF-8; read it as Latin-1" in err


def check_predictions(out: Path, named_with_ext=False):
    """Every odd image was captioned; the long title survived as a reference; nothing broken leaked in."""
    pred = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    got = {Path(n).stem for n in pred.Image_Name}
    assert {Path(n).stem for n in ODD} <= got, got
    assert not any(n.startswith("bad-") for n in got) and "secret" not in got
    assert (pred.reference == LONG_TITLE.strip()).sum() == 1
    assert (pred.reference == "Crème Brûlée").sum() == 1
    assert json.loads((out / "metrics.json").read_text())["test"]["CIDEr"] >= 0


# ------------------------------------------------------------------------ bad images and bad rows
CAPTIONERS = {
    "task1/task1_1.py": lambda m: ["--model", m["vit-gpt2"]],
    "task1/vit_gpt2_finetuned.py": lambda m: ["--model", m["vit-gpt2"], "--epochs", "1", "--workers", "0",
                                              "--batch-size", "16", "--lr", "1e-3"],
    "task2/train.py": lambda m: ["--model", m["llama"], "--vision-model", m["vit"], "--epochs", "1",
                                 "--workers", "0", "--batch-size", "16", "--lr", "3e-3"],
    "task2/deepseek.py": lambda m: ["--model", m["deepseek-vl"], "--batch-size", "16"],
}


@pytest.mark.parametrize("script", list(CAPTIONERS))
def test_captioners_skip_bad_images_and_rows_by_name(script, synth, hostile, untouched, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = call(capsys, script, *CAPTIONERS[script](models(synth)), "--data-dir", hostile,
                             "--output-dir", out, "--preset", "greedy", "--max-new-tokens", "4")
    assert code == 0, err[-3000:]
    assert "Traceback" not in err and "CIDEr" in stdout
    check_skips_named(err)
    check_predictions(out)
    assert snapshot(hostile) == untouched


def test_inferllama_on_a_folder_skips_unreadable_images(synth, hostile, untouched, tmp_path, capsys):
    """task2/inferllama.py --images captions every photo in a folder: broken ones are named, the symlink
    out of the folder is never followed."""
    run = tmp_path / "lora"
    trained = call(capsys, TRAIN2, *CAPTIONERS[TRAIN2](models(synth)), "--data-dir", hostile,
                   "--output-dir", run, "--preset", "greedy", "--max-new-tokens", "2", "--limit", "4")
    assert trained[0] == 0, trained[2][-3000:]
    out = tmp_path / "photos"
    code, _, err = call(capsys, "task2/inferllama.py", "--run", run, "--images", hostile / "images",
                        "--output-dir", out, "--max-new-tokens", "2", "--workers", "0", "--preset", "greedy")
    assert code == 0, err[-3000:]
    names = set(pd.read_csv(out / "predictions.csv", dtype=str).Image_Name)
    assert set(ODD) <= names and not any(n.startswith("bad-") for n in names)
    line = next(x for x in err.splitlines() if "unreadable image(s)" in x)
    assert all(f"{n} ({why}" in line for n, why in BROKEN.items())
    assert json.loads((out / "metrics.json").read_text())["info"]["images"] == len(names)
    # run again into the same folder: it is a finished run (it once said "unfinished")
    again = call(capsys, "task2/inferllama.py", "--run", run, "--photos", hostile / "images", "--output-dir", out)
    assert again[0] == 2 and "already holds a finished run" in again[2], again[2][-2000:]
    assert snapshot(hostile) == untouched


def test_preprocess_reports_every_bad_image_and_row(hostile, untouched, tmp_path, capsys):
    """OCR, blank test and hashing survive every odd image; each removal is a report row with its reason."""
    out = tmp_path / "clean"
    code, stdout, err = call(capsys, "imageCleaning/preprocess.py", "--data-dir", hostile, "--out", out,
                             "--workers", "1")
    assert code == 0 and "Traceback" not in err, err[-3000:]
    report = pd.read_csv(out / "cleaning_report.csv", dtype=str, keep_default_na=False)
    test = report[report.split == "test"]
    for name, why in BROKEN.items():
        row = test[test.Image_Name == Path(name).stem]
        assert list(row.reason) == ["corrupt"] and why in row.detail.item(), row
    unsafe = sorted(test[test.reason == "unsafe name"].Title)
    assert unsafe == ["Absolute Stew", "Escaped Stew", "Linked Stew"]
    assert test[test.Image_Name == "odd-1x1"].reason.item() == "blank"
    kept = {Path(n).stem for n in pd.read_csv(out / "test_data.csv", dtype=str).Image_Name}
    assert {Path(n).stem for n in ODD if "1x1" not in n} <= kept
    # per split: 2 bad titles, the 1x1 image, 4 broken images, 3 unsafe names; the odd images of train
    # and valid are the same files as test's, so they stay in test only (8 leaked photos)
    assert "removed: bad title 6, blank 3, corrupt 12," in stdout and "unsafe name 9" in stdout
    assert "train/test leakage: 8 photo(s)" in stdout
    assert snapshot(hostile) == untouched


def test_split_command_skips_bad_rows(hostile, untouched, tmp_path, capsys):
    out = tmp_path / "layout"
    code, stdout, err = call(capsys, M + "captioning.data", "split", "--csv", hostile / "train_data.csv",
                             "--images", hostile / "images", "--out", out)
    assert code == 0, err
    line = next(x for x in err.splitlines() if x.startswith("split: skipped"))
    assert all(f"{reason}: {n}" in line for reason, n in ROW_SKIPS.items())
    kept = sum(len(pd.read_csv(out / f"{s}_data.csv")) for s in ("train", "valid", "test"))
    assert kept == 4 + 9 + 4 + 2  # good, odd, broken (split only checks that files exist), long and accented
    assert snapshot(hostile) == untouched


# ---------------------------------------------------------------------------------------- bad CSVs
BAD_CSVS = {  # content of every split CSV -> what the one sentence says
    "empty": (b"", "is empty"),
    "other delimiter": (b"Title;Image_Name\nSoup;dish-1\n", "separated by ';'"),
    "binary": (bytes(range(256)) * 8, "binary data"),
    "no columns": (b"Name,Picture\nSoup,dish-1\n", "column"),
    "unclosed quote": (b'Title,Image_Name\n"Soup,dish-1\n', "not a readable csv"),
}


def every_entry_point(m, data: Path, images: Path, out: Path) -> dict:
    """Each entry point that reads the dataset CSVs, with the arguments that point it at `data`."""
    common = ["--data-dir", data, "--images-dir", images, "--output-dir", out]
    train = ["--epochs", "1", "--workers", "0"]
    return {
        "task1/task1_1.py": ["--model", m["vit-gpt2"], *common],
        "task1/vit_gpt2_finetuned.py": ["--model", m["vit-gpt2"], *common, *train],
        "task1/vit_gpt2_attention.py": ["--model", m["vit-gpt2"], *common, *train],
        "task1/vit_gpt2_teacherF.py": ["--model", m["vit-gpt2"], *common, *train],
        "task1/vit_gpt2_finetuned_nuclear.py": ["--model", m["vit-gpt2"], *common, *train],
        "task1/vit_gpt2_finetuned_RL.py": ["--model", m["vit-gpt2"], *common, *train],
        "task2/train.py": ["--model", m["llama"], "--vision-model", m["vit"], *common, *train],
        "task2/deepseek.py": ["--model", m["deepseek-vl"], *common],
        "imageCleaning/preprocess.py": ["--data-dir", data, "--images-dir", images, "--out", out, "--no-ocr"],
        "imageCleaning/remove_images.py": ["--images-dir", images, "--csv", data / "train_data.csv",
                                           "--dry-run"],
        M + "captioning.data": ["split", "--csv", data / "train_data.csv", "--images", images, "--out", out],
        M + "captioning.metrics": [data / "test_data.csv"],
    }


ENTRY_POINTS = list(every_entry_point({k: "" for k in ("vit-gpt2", "llama", "vit", "deepseek-vl")},
                                      Path(), Path(), Path()))


@pytest.mark.parametrize("variant", list(BAD_CSVS))
def test_bad_csv_is_one_sentence_at_every_entry_point(variant, synth, hostile, tmp_path, capsys):
    content, words = BAD_CSVS[variant]
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}_data.csv").write_bytes(content)
    before = snapshot(data)
    for script, argv in every_entry_point(models(synth), data, hostile / "images", tmp_path / "out").items():
        result = call(capsys, script, *argv)
        clean_failure(result, words)
        assert "\x00" not in result[2] and len(result[2].splitlines()[-1]) < 400, result[2][-500:]
        no_results(tmp_path / "out")
    assert snapshot(data) == before


@pytest.mark.parametrize("script", [s for s in ENTRY_POINTS if s.startswith("task")])
def test_header_only_splits(script, synth, hostile, tmp_path, capsys):
    """A split CSV with only its header: training needs train and valid rows, evaluation valid or test
    rows; each stops with one sentence, after naming the empty split."""
    data = tmp_path / "data"
    shutil.copytree(hostile, data, symlinks=True, ignore=shutil.ignore_patterns("images"))
    (data / "valid_data.csv").write_text("Title,Image_Name\n")
    if script in ("task1/task1_1.py", "task2/deepseek.py"):
        (data / "test_data.csv").write_text("Title,Image_Name\n")  # nothing left to score at all
        words = "nothing to evaluate"
    else:
        words = "valid split has no usable images"
    out = tmp_path / "out"
    argv = every_entry_point(models(synth), data, hostile / "images", out)[script]
    result = call(capsys, script, *argv, "--limit", "2")
    clean_failure(result, words)
    assert "valid: no usable rows (of 0)" in result[2]
    no_results(out)
    if words.startswith("valid"):  # training without training rows
        shutil.copy(hostile / "valid_data.csv", data / "valid_data.csv")
        (data / "train_data.csv").write_text("Title,Image_Name\n")
        clean_failure(call(capsys, script, *argv, "--limit", "2"), "train split has no usable images")
        no_results(out)


# -------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_missing_folders_and_unwritable_output(script, synth, hostile, untouched, tmp_path, capsys):
    """A data folder, CSV or images folder that does not exist, and an output folder that cannot be
    created (its parent is a file; as root, permissions would not stop the write)."""
    m = models(synth)
    missing, blocker = tmp_path / "nope", tmp_path / "a-file"
    blocker.write_text("mine")
    argv = every_entry_point(m, missing, hostile / "images", tmp_path / "o")[script]
    clean_failure(call(capsys, script, *argv), "does not exist")
    if not script.endswith("metrics"):
        argv = every_entry_point(m, hostile, missing, tmp_path / "o")[script]
        clean_failure(call(capsys, script, *argv), "images", "does not exist")
    argv = every_entry_point(m, hostile, hostile / "images", blocker / "run")[script]
    if blocker / "run" in argv:  # the entry points that write a folder
        limit = ["--limit", "2"] if script.startswith("task") else []
        clean_failure(call(capsys, script, *argv, *limit), "cannot", str(blocker / "run"))
    assert blocker.read_text() == "mine" and not missing.exists()
    assert not (tmp_path / "o" / "metrics.json").exists()
    assert snapshot(hostile) == untouched


CHOICES = [("task1/vit_gpt2_finetuned.py", "--freeze", "everything"),
           ("task1/vit_gpt2_attention.py", "--freeze", "all"),
           ("task1/vit_gpt2_teacherF.py", "--freeze", "encoder"),
           ("task1/vit_gpt2_finetuned_nuclear.py", "--freeze", "gpt3"),
           ("task1/vit_gpt2_finetuned_RL.py", "--freeze", "vit-and-gpt2"),
           ("task1/vit_gpt2_finetuned_RL.py", "--reward", "bleu"),
           ("task1/vit_gpt2_finetuned_RL.py", "--baseline", "none"),
           ("task2/train.py", "--lora", "r16"),
           ("task1/task1_1.py", "--preset", "sampling"),
           ("imageCleaning/preprocess.py", "--duplicates", "delete")]


@pytest.mark.parametrize("script,flag,value", CHOICES)
def test_unknown_choices(script, flag, value, tmp_path, capsys):
    code, _, err = call(capsys, script, flag, value)
    assert code == 2 and f"argument {flag}: invalid choice: '{value}'" in err and "Traceback" not in err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({flag[2:].replace("-", "_"): value}))
    clean_failure(call(capsys, script, "--config", config), "must be one of")


def pickled_weights(folder: Path, marker: Path) -> None:
    """Replace a model's safetensors by a pytorch_model.bin whose unpickling would run a command."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Payload()}))


@pytest.fixture(scope="module")
def not_models(synth, tmp_path_factory):
    """Model paths that are not models: an empty folder, a file, pickled weights that carry code, cut
    safetensors, and a model of the wrong kind."""
    d = tmp_path_factory.mktemp("not-models")
    (d / "empty").mkdir()
    (d / "weights.bin").write_bytes(b"\x00" * 64)
    for name, model in (("pickled", "vit-gpt2"), ("cut", "vit-gpt2"), ("pickled-llama", "llama"),
                        ("pickled-vit", "vit")):
        shutil.copytree(synth / "models" / model, d / name)
        if name.startswith("pickled"):
            pickled_weights(d / name, d / "PAYLOAD-RAN")
    raw = (d / "cut" / "model.safetensors").read_bytes()
    (d / "cut" / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    return d


MODEL_CASES = {"empty": "holds no model", "weights.bin": "is a file", "pickled": "refusing to load",
               "cut": "damaged", "llama": "not an image captioner"}


@pytest.mark.parametrize("script", [s for s in ENTRY_POINTS if s.startswith("task1")])
def test_a_model_path_that_is_not_a_model(script, synth, hostile, not_models, tmp_path, capsys):
    for case, words in MODEL_CASES.items():
        path = synth / "models" / "llama" if case == "llama" else not_models / case
        argv = every_entry_point(models(synth), hostile, hostile / "images", tmp_path / case)[script]
        argv[argv.index("--model") + 1] = path
        clean_failure(call(capsys, script, *argv, "--limit", "2"), words)
        no_results(tmp_path / case)
    assert not (not_models / "PAYLOAD-RAN").exists()


@pytest.mark.parametrize("flag", ["--model", "--vision-model"])
def test_task2_model_paths_that_are_not_models(flag, synth, hostile, not_models, tmp_path, capsys):
    for case in ("empty", "weights.bin"):
        argv = every_entry_point(models(synth), hostile, hostile / "images", tmp_path / case)[TRAIN2]
        argv[argv.index(flag) + 1] = not_models / case
        clean_failure(call(capsys, TRAIN2, *argv, "--limit", "2"), MODEL_CASES[case])
        no_results(tmp_path / case)
    deepseek = every_entry_point(models(synth), hostile, hostile / "images", tmp_path / "ds")[DEEPSEEK]
    deepseek[deepseek.index("--model") + 1] = not_models / "weights.bin"
    clean_failure(call(capsys, DEEPSEEK, *deepseek, "--limit", "2"), "is a file")
    clean_failure(call(capsys, "task2/inferllama.py", "--run", not_models / "empty", "--data-dir", hostile,
                       "--output-dir", tmp_path / "inf"), "anymodal.json")


def pickled_task2(flag, synth, hostile, not_models, out):
    argv = every_entry_point(models(synth), hostile, hostile / "images", out)[TRAIN2]
    argv[argv.index(flag) + 1] = not_models / ("pickled-llama" if flag == "--model" else "pickled-vit")
    return argv + ["--limit", "2"]


@pytest.mark.parametrize("flag", ["--model", "--vision-model"])
def test_task2_never_runs_code_from_pickled_weights(flag, synth, hostile, not_models, tmp_path, capsys):
    try:
        call(capsys, TRAIN2, *pickled_task2(flag, synth, hostile, not_models, tmp_path / "o"))
    except pickle.UnpicklingError:  # refused, though not yet as one sentence (next test)
        pass
    assert not (not_models / "PAYLOAD-RAN").exists()
    no_results(tmp_path / "o")


@pytest.mark.parametrize("flag", ["--model", "--vision-model"])
def test_task2_pickled_weights_are_one_sentence(flag, synth, hostile, not_models, tmp_path, capsys):
    result = call(capsys, TRAIN2, *pickled_task2(flag, synth, hostile, not_models, tmp_path / "o"))
    clean_failure(result, "refusing to load")


# ------------------------------------------------------------------------------------------- faults
def train_args(synth, out, *extra):
    return ["--model", models(synth)["vit-gpt2"], "--data-dir", synth, "--output-dir", out, "--epochs", "3",
            "--batch-size", "8", "--lr", "2e-3", "--workers", "0", "--preset", "greedy",
            "--max-new-tokens", "6", "--patience", "0", "--eval-every", "3", "--limit", "8",
            "--hf-token", SECRET, *extra]


def files_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


def test_full_disk_while_checkpointing_then_resume(synth, tmp_path, capsys, monkeypatch):
    """ENOSPC in the middle of a checkpoint write (the optimizer file) and at the commit point
    (latest.json): the latest checkpoint stays the previous complete one, a log line cut short by the
    full disk is ignored, and --resume ends exactly like an uninterrupted run. The token (flag and
    HF_TOKEN) is in none of the run's files, the output, or what goes to TensorBoard/wandb."""
    from safetensors.torch import load_file

    from captioning import engine

    monkeypatch.setenv("HF_TOKEN", SECRET_ENV)
    tracked = []
    real_accelerator = engine.make_accelerator

    def recording_accelerator(cfg, project_dir=None):  # what a tracker (TensorBoard, wandb) would receive
        import dataclasses

        acc = real_accelerator(dataclasses.replace(cfg, report_to="none"))
        acc.init_trackers = lambda name, config=None, **kw: tracked.append(json.dumps(config))
        acc.log = lambda values, step=None, **kw: tracked.append(json.dumps(values))
        return acc

    monkeypatch.setattr(engine, "make_accelerator", recording_accelerator)
    clean = tmp_path / "clean"
    code, out, err = call(capsys, FT, *train_args(synth, clean, "--report-to", "wandb"))
    assert code == 0, err[-3000:]
    assert '"lr": 0.002' in tracked[0] and len(tracked) == 4  # the config, then one log per epoch
    for text in (out, err, files_text(clean), *tracked):
        assert SECRET not in text and SECRET_ENV not in text
    monkeypatch.setattr(engine, "make_accelerator", real_accelerator)

    run = tmp_path / "full"
    real_save, saves = torch.save, []

    def disk_fills(obj, f, *a, **k):  # the second checkpoint's optimizer file: half written, then ENOSPC
        saves.append(f)
        if len(saves) == 2:
            Path(f).write_bytes(b"\x80\x02" + b"\x00" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", disk_fills)
    clean_failure(call(capsys, FT, *train_args(synth, run)), "no space left on device")
    monkeypatch.setattr(torch, "save", real_save)
    ck = run / "checkpoint"
    assert json.loads((ck / "latest.json").read_text()) == {"dir": "epoch-0001"}
    load_file(ck / "epoch-0001" / "trainable.safetensors")  # complete and readable
    torch.load(ck / "epoch-0001" / "optimizer.pt", weights_only=True)
    assert json.loads((ck / "epoch-0001" / "state.json").read_text())["epochs_done"] == 1
    no_results(run)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # a log line the full disk cut short

    real_write = engine.atomic_write_text

    def commit_fails(path, text):
        if path.name == "latest.json" and "epoch-0003" in text:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, text)

    monkeypatch.setattr(engine, "atomic_write_text", commit_fails)
    clean_failure(call(capsys, FT, *train_args(synth, run, "--resume")), "no space")
    monkeypatch.setattr(engine, "atomic_write_text", real_write)
    assert json.loads((ck / "latest.json").read_text()) == {"dir": "epoch-0002"}
    no_results(run)

    code, out, err = call(capsys, FT, *train_args(synth, run, "--resume"))
    assert code == 0 and "resuming after epoch 2" in out, err[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (clean, run))
    assert a["valid"] == b["valid"] and a["test"] == b["test"]
    la, lb = ([json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()] for d in (clean, run))
    assert [r["epoch"] for r in lb] == [1, 2, 3]
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]
    assert sorted(p.name for p in ck.iterdir()) == ["epoch-0003", "latest.json"]  # no half-written leftovers
    assert SECRET not in files_text(run) and SECRET_ENV not in files_text(run)


def test_resume_refuses_a_pickled_or_damaged_checkpoint(synth, tmp_path, capsys):
    out = tmp_path / "run"
    assert call(capsys, FT, *train_args(synth, out, "--epochs", "1"))[0] == 0
    (out / "metrics.json").unlink()  # pretend the run was killed before its end
    marker = tmp_path / "PAYLOAD-RAN"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ck = out / "checkpoint" / "epoch-0001"
    torch.save({"state": {}, "param_groups": [], "x": Payload()}, ck / "optimizer.pt")
    resume = train_args(synth, out, "--epochs", "2", "--resume")
    clean_failure(call(capsys, FT, *resume), "checkpoint", "damaged or not ours")
    assert not marker.exists()
    (ck / "trainable.safetensors").write_bytes(b"junk")
    clean_failure(call(capsys, FT, *resume), "damaged or not ours")


def test_sigkill_during_a_quarantine_move_then_undo_and_rerun(tmp_path):
    """Killed between two moves: --undo puts every moved file back (the manifest is written before the
    first move), and a re-run ends exactly like a run that was never interrupted."""
    def world(root: Path):
        images = root / "images"
        images.mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (6 + i, 6), (30 * i, 90, 9)).save(images / f"img{i}.jpg")
        keep = pd.DataFrame({"Title": ["a", "b"], "Image_Name": ["img0", "img1"]})
        keep.to_csv(root / "keep.csv", index=False)
        return images

    script = ROOT / "imageCleaning" / "remove_images.py"
    calm = world(tmp_path / "calm")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    calm_run = run_cli_quiet(script, "--images-dir", calm, "--csv", tmp_path / "calm" / "keep.csv")
    assert calm_run.returncode == 0, calm_run.stderr

    images = world(tmp_path / "killed")
    before = snapshot(tmp_path / "killed")
    slow = ("import os, runpy, sys, time\nrename = os.rename\n"
            "def slow(a, b):\n    rename(a, b)\n    time.sleep(0.4)\n"
            "os.rename = slow\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.Popen([sys.executable, "-c", slow, script, "--images-dir", images, "--csv",
                             tmp_path / "killed" / "keep.csv"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    quarantine = tmp_path / "killed" / "images_quarantine"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if quarantine.exists() and len(list(quarantine.glob("*/*.jpg"))) >= 2:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    moved = list(quarantine.glob("*/*.jpg"))
    assert proc.returncode == -signal.SIGKILL and 2 <= len(moved) < 6, "not killed midway"
    manifest = next(quarantine.glob("*/manifest.csv"))
    assert len(pd.read_csv(manifest)) == 6  # every planned move is listed before the first one

    undo = run_cli_quiet(script, "--undo", manifest)
    assert undo.returncode == 0 and f"restored {len(moved)} of 6" in undo.stdout, undo.stderr
    assert "already back" in undo.stderr
    assert {k: v for k, v in snapshot(tmp_path / "killed").items() if "quarantine" not in k} == before
    again = run_cli_quiet(script, "--images-dir", images, "--csv", tmp_path / "killed" / "keep.csv")
    assert again.returncode == 0, again.stderr
    assert snapshot(images) == snapshot(calm)
    newest = sorted(quarantine.iterdir())[-1]
    calm_q = next((tmp_path / "calm" / "images_quarantine").iterdir())
    assert {p.name: p.read_bytes() for p in newest.glob("*.jpg")} == \
        {p.name: p.read_bytes() for p in calm_q.glob("*.jpg")}


def run_cli_quiet(*args):
    return subprocess.run([sys.executable, *map(str, args)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------------ security
CODE = [p for p in ROOT.glob("*.py")] + [p for d in ("captioning", "task1", "task2", "imageCleaning", "bench")
                                         for p in (ROOT / d).rglob("*.py")]


def test_weights_never_come_from_pickle_and_remote_code_is_opt_in():
    """Grep: torch.load only with weights_only=True, no pickle/joblib/dill loading, no allow_pickle,
    and trust_remote_code only ever passes a user's flag (never a literal True)."""
    assert len(CODE) > 20
    for path in CODE:
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, end = 1, m.end()
            while depth and end < len(text):  # the whole call, nested parentheses included
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            assert "weights_only=True" in text[m.end(): end], f"{path}: {text[m.start(): end]}"
        for bad in ("pickle.load", "pickle.Unpickler", "joblib.load", "dill.load", "allow_pickle=True",
                    "trust_remote_code=True", "torch.jit.load"):
            assert bad not in text, f"{path}: {bad}"
        for m in re.finditer(r"trust_remote_code\s*[:=]\s*([\w.]+)", text):
            allowed = ("trust_remote_code", "bool", "False", "cfg.trust_remote_code")
            assert m.group(1) in allowed, (path, m.group(0))


def test_remote_code_in_a_model_folder_never_runs_without_the_flag(synth, hostile, tmp_path, capsys):
    folder = tmp_path / "remote"
    shutil.copytree(synth / "models" / "deepseek-vl", folder)
    marker = tmp_path / "REMOTE-CODE-RAN"
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny-remote", auto_map={"AutoConfig": "remote.RemoteConfig",
                                                       "AutoModelForImageTextToText": "remote.RemoteModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "remote.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    argv = every_entry_point(models(synth), hostile, hostile / "images", tmp_path / "out")[DEEPSEEK]
    argv[argv.index("--model") + 1] = folder
    clean_failure(call(capsys, DEEPSEEK, *argv, "--limit", "2"), "cannot load model")
    assert not marker.exists()
    no_results(tmp_path / "out")


def test_token_is_never_shown_and_nothing_is_written_elsewhere(synth, hostile, untouched, tmp_path):
    """A run in a fresh process with its own HOME, TMPDIR and working folder writes only into
    --output-dir and the cache folder, and the token (flag and HF_TOKEN) appears nowhere."""
    home, tmp, cwd, cache, out = (tmp_path / n for n in ("home", "tmp", "cwd", "cache", "out"))
    for d in (home, tmp, cwd):
        d.mkdir()
    models_before = snapshot(synth / "models")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "HF_TOKEN": SECRET_ENV, "FOODCAP_CACHE": str(cache)}
    argv = [ROOT / "task1" / "task1_1.py", "--model", models(synth)["vit-gpt2"], "--data-dir", hostile,
            "--output-dir", out, "--hf-token", SECRET, "--preset", "greedy", "--max-new-tokens", "4",
            "--limit", "2"]
    p = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    for text in (p.stdout, p.stderr, files_text(out), files_text(cache)):
        assert SECRET not in text and SECRET_ENV not in text
    assert json.loads((out / "config.json").read_text())["hf_token"] == "<redacted>"
    assert list(home.rglob("*")) == [] and list(tmp.rglob("*")) == [] and list(cwd.rglob("*")) == []
    assert {p.name for p in cache.iterdir()} >= {"torchinductor"} and any(cache.glob("pixels-*.npy"))
    assert snapshot(hostile) == untouched and snapshot(synth / "models") == models_before


# ---------------------------------------------------------------------------- report on broken runs
def test_report_leaves_out_damaged_run_files(synth, tmp_path, capsys):
    bad = tmp_path / "bad"
    from test_report import fake_run

    fake_run(tmp_path, "good", 1.0, synth)
    fake_run(tmp_path, "bad", 2.0, synth)
    with open(bad / "log.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # cut short by a kill
    (bad / "predictions.csv").write_bytes(bytes(range(256)))
    (tmp_path / "worse").mkdir()
    (tmp_path / "worse" / "metrics.json").write_text("[1, 2]")
    code, out, err = call(capsys, M + "captioning.report", tmp_path)
    assert code == 0 and "Traceback" not in err, err
    assert "| good | good | test |" in out and "| bad | bad | test |" in out
    assert "bad/predictions.csv holds binary data" in err
    assert "worse/metrics.json is not a readable JSON" in err
    assert (tmp_path / "gallery.html").exists() and (tmp_path / "curves.png").exists()
    from captioning.report import _read_log

    assert [r["epoch"] for r in _read_log(bad / "log.jsonl")] == [1, 2]  # the cut-short line is left out
    assert "Two Eggs on a Red Plate" in (tmp_path / "gallery.html").read_text()  # good's captions still shown
