"""The README's real-data block, run as written on a fake Kaggle download.

The download has the real file names and column order (an unnamed index column first, Title,
Ingredients, Instructions, Image_Name, Cleaned_Ingredients), the photos one level down in
"Food Images/Food Images", and its quirks: `#NAME?` and empty titles, a `#NAME?` image name, an
exact duplicate row, multi-line quoted cells, non-ASCII and very long titles, the same photo under two
names, a photo of printed text and a truncated JPEG. Every `python ...` line of the README block runs
with its own arguments, in this process (each would otherwise pay ~5 s of imports), from a folder that
holds the download as the README asks; the only flags added are the tiny models of captioning.synthetic
(`--model`, and `--vision-model` is already in the README) and knobs that keep them quick (`--epochs 1`,
`--max-new-tokens`, `--preset greedy`, `--workers 0`, `--samples`, `--pool`, `--batch-size`). The undo
command that remove_images prints is pasted back as printed. `demo.py` on the user's data runs the same
recipes and is covered by its own option test (test_newcomer).
"""
import importlib
import importlib.util
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from captioning.config import run_main
from conftest import ROOT
from test_remove_images import snapshot

KAGGLE_CSV = "Food Ingredients and Recipe Dataset with Image Name Mapping.csv"
COLUMNS = ["", "Title", "Ingredients", "Instructions", "Image_Name", "Cleaned_Ingredients"]
LONG = "Slow-Roasted Tomatoes with Garlic, Thyme, Olive Oil and " + "a Very Long Story " * 20


def readme_commands() -> list[list[str]]:
    """The `python ...` commands of the README's real-data block, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## The real dataset on a GPU", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(x) for x in lines if x.startswith("python ")]


def kaggle_download(root: Path, synth: Path, n: int = 30) -> dict:
    """The fake download in root; returns what split and the cleaner must report."""
    inner = root / "Food Images" / "Food Images"
    inner.mkdir(parents=True)
    train = pd.read_csv(synth / "train_data.csv", dtype=str, keep_default_na=False)
    clean = train[train.Image_Name.str.startswith("dish-")].head(n)
    rows = []

    def row(title, name, instructions="Mix.\nBake for 20 minutes, then \"rest\".\n\nServe."):
        rows.append({"Title": title, "Ingredients": "['1 egg', '2 cups flour, sifted']",
                     "Instructions": instructions, "Image_Name": name,
                     "Cleaned_Ingredients": "['1 egg', '2 cups flour']"})

    for i, r in enumerate(clean.to_dict("records")):
        name = f"{re.sub('[^a-z]+', '-', r['Title'].lower())}-{i}"
        shutil.copy(synth / "images" / f"{r['Image_Name']}.jpg", inner / f"{name}.jpg")
        title = {0: "Crème Brûlée with Two Figs — Évora style", 1: LONG}.get(i, r["Title"])
        row(title, name)
    row("#NAME?", rows[2]["Image_Name"])  # Excel's formula error instead of a title
    row("", rows[3]["Image_Name"])
    row("Mystery Cake", "#NAME?")  # and instead of an image name: no such photo
    rows.append(dict(rows[4]))  # an exact duplicate row
    for name, title, src in (("best-home-recipes-cover", "Best Home Recipes", "zz-cookbook-cover"),
                             ("egg-on-red-plate", "One Egg on a Red Plate", "zz-truncated"),
                             ("leftovers-a", "Two Eggs on a Plate", "zz-dup-a"),
                             ("leftovers-b", "Leftovers on a Plate", "zz-dup-b")):
        shutil.copy(synth / "images" / f"{src}.jpg", inner / f"{name}.jpg")
        row(title, name)
    df = pd.DataFrame(rows)
    df.insert(0, "", range(len(df)))  # the unnamed index column pandas wrote
    df.to_csv(root / KAGGLE_CSV, index=False, columns=COLUMNS)
    return {"rows": len(df), "kept": len(df) - 4,
            "dropped": {"#NAME? title": 1, "empty title": 1, "missing image": 1, "duplicate row": 1},
            "removed": {"corrupt": 1, "duplicate": 1, "text": 1}}


def tiny(synth: Path) -> dict:
    """Flags added per script: tiny models, and settings that keep them quick."""
    models = synth / "models"
    quick = ["--max-new-tokens", "4", "--preset", "greedy", "--workers", "0"]
    train = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3", *quick]
    return {"task1/task1_1.py": ["--model", str(models / "vit-gpt2"), *quick],
            "task1/vit_gpt2_finetuned.py": ["--model", str(models / "vit-gpt2"), *train],
            "task1/vit_gpt2_finetuned_RL.py": [*train, "--samples", "2"],
            "task2/train.py": ["--model", str(models / "llama"), *train, "--pool", "4x4"],
            "task2/inferllama.py": quick,
            "task2/deepseek.py": ["--model", str(models / "deepseek-vl"), "--max-new-tokens", "4"]}


_modules = {}


def call(capsys, argv: list[str]):
    """Run `python ARGV...` (a script path or -m module) in this process; (exit code, stdout, stderr)."""
    if argv[1] == "-m":
        main, args = importlib.import_module(argv[2]).main, argv[3:]
    else:
        if argv[1] not in _modules:
            path = ROOT / argv[1]
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up while it executes
            spec.loader.exec_module(module)
            _modules[argv[1]] = module
        main, args = _modules[argv[1]].main, argv[2:]
    try:
        run_main(main, args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_readme_real_data_block_on_a_kaggle_shaped_download(synth, tmp_path, monkeypatch, capsys, one_thread):
    expect = kaggle_download(tmp_path, synth)
    photos = tmp_path / "my_photos"
    (photos / "holiday").mkdir(parents=True)
    Image.open(synth / "images" / "dish-3-00001.jpg").save(photos / "IMG_0001.JPG")
    Image.open(synth / "images" / "dish-3-00002.jpg").save(photos / "dish.webp")
    download = snapshot(tmp_path / "Food Images") | {"csv": (tmp_path / KAGGLE_CSV).read_bytes()}
    monkeypatch.chdir(tmp_path)
    extra = tiny(synth)
    commands = readme_commands()
    scripts = [c[1] if c[1] != "-m" else c[2] for c in commands]
    assert scripts[:3] == ["captioning.data", "imageCleaning/preprocess.py", "imageCleaning/remove_images.py"]
    assert set(extra) <= set(scripts) and "captioning.report" in scripts

    outputs = {}
    for argv in commands:
        script = argv[1] if argv[1] != "-m" else argv[2]
        code, out, err = call(capsys, argv + extra.get(script, []))
        assert code == 0 and "Traceback" not in err, (argv, out[-2000:], err[-3000:])
        outputs.setdefault(script, []).append(out + err)

    split = outputs["captioning.data"][0]
    assert f"kept {expect['kept']} of {expect['rows']} rows" in split
    assert all(f"'{why}': {n}" in split for why, n in expect["dropped"].items()), split
    link = Path("data/images")
    assert link.is_symlink() and not os.readlink(link).startswith("/")  # a relative link
    cleaning = outputs["imageCleaning/preprocess.py"][0]
    kept = expect["kept"] - sum(expect["removed"].values())
    assert f"kept {kept} of {expect['kept']} rows" in cleaning, cleaning
    assert "removed: " + ", ".join(f"{r} {n}" for r, n in expect["removed"].items()) in cleaning, cleaning
    assert sum(len(pd.read_csv(f"data_clean/{s}_data.csv")) for s in ("train", "valid", "test")) == kept
    table = outputs["captioning.report"][0]
    for run in ("task1_1", "vit_gpt2_finetuned", "vit_gpt2_finetuned_RL", "llama_lora", "inferllama", "deepseek"):
        assert f"| {run} |" in table, (run, table)
    assert Path("runs/gallery.html").exists() and Path("runs/curves.png").exists()
    scored = len(pd.read_csv("runs/inferllama/predictions.csv"))
    assert re.search(rf"\| runs/inferllama/predictions.csv \| {scored} \|", outputs["captioning.metrics"][0])
    names = list(pd.read_csv("runs/my_photos/predictions.csv", dtype=str).Image_Name)
    assert names == ["IMG_0001.JPG", "dish.webp"] and "holiday/" in outputs["task2/inferllama.py"][1]

    # the quarantine's undo command, pasted as printed, puts the download back as it was
    removal = outputs["imageCleaning/remove_images.py"][0]
    assert f"{sum(expect['removed'].values())} unreferenced image(s)" in removal
    undo = shlex.split(next(x for x in removal.splitlines() if x.startswith("undo with: "))[len("undo with: "):])
    code, out, err = call(capsys, undo)
    assert code == 0 and "restored 3 of 3" in out, (out, err)
    assert snapshot(tmp_path / "Food Images") | {"csv": (tmp_path / KAGGLE_CSV).read_bytes()} == download
    code, out, err = call(capsys, ["python", "-m", "captioning.doctor"])
    assert "Traceback" not in err, err


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
