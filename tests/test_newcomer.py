"""What a new user hit on the way from the Kaggle download to a report (issue 15), one check each,
and `--dataset`: a Hugging Face dataset (here a local imagefolder, offline) gives the same records,
split and metrics as the equivalent CSV folder."""
import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from captioning.config import RunConfig, UserError, build_parser
from captioning.data import SPLITS, folder_records, load_split, resolve_image, split_main, split_records
from conftest import ROOT

HUB_NAMES = {"train": "train", "valid": "validation", "test": "test"}


def load(script: str):
    """A script (task1/..., demo.py) as a module, as demo.load_script loads the recipes."""
    path = ROOT / script
    if path.stem not in sys.modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[path.stem]


def imagefolder(csv_dir: Path, out: Path, splits=HUB_NAMES) -> Path:
    """The CSV layout as an imagefolder: one folder per split with its images and a metadata.csv."""
    for split, hub in splits.items():
        df = pd.read_csv(csv_dir / f"{split}_data.csv", dtype=str, keep_default_na=False)
        (out / hub).mkdir(parents=True, exist_ok=True)
        rows = []
        for r in df.to_dict("records"):
            src = resolve_image(csv_dir / "images", r["Image_Name"])
            if src is not None:
                shutil.copy(src, out / hub / src.name)
                rows.append({"file_name": src.name, "Title": r["Title"]})
        meta = out / hub / "metadata.csv"
        old = pd.read_csv(meta, dtype=str) if meta.exists() else None
        pd.concat([old, pd.DataFrame(rows)]).to_csv(meta, index=False)
    return out


def same(a, b):
    return [(r.image_name, r.title, r.references) for r in a] == [(r.image_name, r.title, r.references) for r in b]


def test_dataset_gives_the_records_split_and_metrics_of_the_csv_folder(synth, tmp_path, one_thread, capsys):
    hub = imagefolder(synth, tmp_path / "hub")
    for split in SPLITS:
        csv, _ = split_records(RunConfig(data_dir=str(synth)), split)
        ds, _ = split_records(RunConfig(dataset=str(hub)), split)
        assert len(csv) > 5 and same(csv, ds), split
    # the same run through --dataset and --data-dir: same predictions and metrics
    task1_1 = load("task1/task1_1.py")
    common = ["--model", str(synth / "models" / "vit-gpt2"), "--preset", "nucleus", "--limit", "12",
              "--max-new-tokens", "6", "--workers", "0"]
    a = task1_1.main(common + ["--dataset", str(hub), "--output-dir", str(tmp_path / "a")])
    b = task1_1.main(common + ["--data-dir", str(synth), "--output-dir", str(tmp_path / "b")])
    diff = {(s, k): (a[s][k], b[s].get(k)) for s in a for k in a[s] if a[s][k] != b[s].get(k)}
    assert a == b and a["test"]["images"] == 12, diff
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    # the report finds a --dataset run's images for its gallery
    from captioning.report import gallery

    page = gallery([tmp_path / "a"], tmp_path, n=4).read_text()
    assert page.count("data:image/png") == 4
    # a dataset with one split gets exactly the split `captioning.data split` makes of one table
    one = tmp_path / "one"
    for split in SPLITS:
        imagefolder(synth, one, {split: "train"})
    whole = pd.concat([pd.read_csv(synth / f"{s}_data.csv", dtype=str, keep_default_na=False) for s in SPLITS])
    whole.to_csv(tmp_path / "whole.csv", index=False)
    split_main(["--csv", str(tmp_path / "whole.csv"), "--images-dir", str(synth / "images"),
                "--out", str(tmp_path / "layout")])
    for split in SPLITS:
        csv, _ = load_split(tmp_path / "layout", split, synth / "images")
        ds, _ = split_records(RunConfig(dataset=str(one)), split)
        assert same(csv, ds), split
    # the cleaner reads a --dataset too, and its output folder then works on its own (OUT/images)
    summary = load("imageCleaning/preprocess.py").main(["--dataset", str(hub), "--out", str(tmp_path / "clean"),
                                                        "--no-ocr", "--workers", "1"])
    assert summary["rows_kept"]["test"] > 5 and (tmp_path / "clean" / "images").is_symlink()
    assert len(load_split(tmp_path / "clean", "test")[0]) == summary["rows_kept"]["test"]
    # a hub-style dataset: images stored as bytes (parquet), several captions per image, one split
    import datasets

    titles = [["Two Eggs on a Red Plate", "eggs on a plate"], ["A Blue Bowl of Olives"]] * 5
    pics = [Image.new("RGB", (16, 16), (20 * i, 0, 0)) for i in range(10)]
    (tmp_path / "parquet").mkdir()
    datasets.Dataset.from_dict({"image": pics, "caption": titles}).cast_column("image", datasets.Image()) \
        .to_parquet(str(tmp_path / "parquet" / "train.parquet"))
    records = {s: split_records(RunConfig(dataset=str(tmp_path / "parquet")), s)[0] for s in SPLITS}
    assert {s: len(r) for s, r in records.items()} == {"train": 8, "valid": 1, "test": 1}
    first = min(records["train"], key=lambda r: r.image_name)
    assert first.image_name == "train-000000" and first.references == ["Two Eggs on a Red Plate", "eggs on a plate"]
    assert Image.open(first.path).getpixel((0, 0)) == (0, 0, 0)
    with pytest.raises(UserError, match="does not exist"):
        split_records(RunConfig(dataset=str(tmp_path / "nowhere")), "train")
    with pytest.raises(UserError, match="Title"):  # an imagefolder without metadata: no title column
        no_meta = tmp_path / "bare" / "train"
        no_meta.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(no_meta / "x.png")
        split_records(RunConfig(dataset=str(tmp_path / "bare")), "train")


def test_offline_hub_dataset_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not in the cache and HF_HUB_OFFLINE is set"):
        split_records(RunConfig(dataset="someone/food-captions-not-cached"), "train")


def test_image_names_extensions_and_folder_mode(tmp_path, capsys):
    images = tmp_path / "photos"
    (images / "more").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "IMG_0001.JPG")
    Image.new("RGB", (8, 8)).save(images / "dish.webp")
    Image.new("RGB", (8, 8)).save(images / "more" / "inner.jpg")
    (images / "notes.txt").write_text("x")
    assert resolve_image(images, "IMG_0001") == images / "IMG_0001.JPG"  # a CSV row without the extension
    assert resolve_image(images, "dish") == images / "dish.webp"
    names = [r.image_name for r in folder_records(images)]
    assert names == ["IMG_0001.JPG", "dish.webp"]
    err = capsys.readouterr().err
    assert "left out 2 entries" in err and "more/" in err and "notes.txt" in err


def test_every_option_has_help(capsys):
    """--help explains every option of every script (redefined fields such as --output-dir keep the base
    class's text), and `python -m captioning.data --help` shows the split command's options."""
    scripts = ["task1/task1_1.py", "task1/vit_gpt2_finetuned.py", "task1/vit_gpt2_finetuned_RL.py",
               "task1/vit_gpt2_teacherF.py", "task1/vit_gpt2_finetuned_nuclear.py", "task1/vit_gpt2_attention.py",
               "task1/blip.py", "task1/baselines.py", "task2/train.py", "task2/inferllama.py", "task2/deepseek.py",
               "task2/vlm_lora.py", "imageCleaning/preprocess.py"]
    for script in scripts:
        parser = build_parser(load(script).Config)
        bare = [a.option_strings[0] for a in parser._actions if (a.help or "").startswith("(default")]
        assert not bare, (script, bare)
        if "--dataset" not in parser._option_string_actions:
            raise AssertionError(f"{script} has no --dataset")
    from captioning.data import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--csv" in out and "--images-dir" in out and "--overwrite" in out


def test_split_refuses_another_seed_hints_one_level_down_and_links_relatively(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inner = Path("Food Images") / "Food Images"
    inner.mkdir(parents=True)
    for i in range(20):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(inner / f"dish-{i}.jpg")
    pd.DataFrame({"Title": [f"Dish {i}" for i in range(20)], "Image_Name": [f"dish-{i}" for i in range(20)]}) \
        .to_csv("kaggle.csv")
    with pytest.raises(UserError, match="one level down: pass 'Food Images/Food Images'"):
        split_main(["--csv", "kaggle.csv", "--images", "Food Images", "--out", "data"])
    split_main(["--csv", "kaggle.csv", "--images", str(inner), "--out", "data", "--link-images"])
    link = Path("data/images")
    assert link.is_symlink() and not Path(link.readlink()).is_absolute() and resolve_image(link, "dish-3")
    before = {p.name: p.read_bytes() for p in Path("data").glob("*.csv")}
    split_main(["--csv", "kaggle.csv", "--images", str(inner), "--out", "data"])  # the same split again: fine
    with pytest.raises(UserError, match="already holds a different split"):
        split_main(["--csv", "kaggle.csv", "--images", str(inner), "--out", "data", "--seed", "7"])
    assert {p.name: p.read_bytes() for p in Path("data").glob("*.csv")} == before
    split_main(["--csv", "kaggle.csv", "--images", str(inner), "--out", "data", "--seed", "7", "--overwrite"])
    assert {p.name: p.read_bytes() for p in Path("data").glob("*.csv")} != before


def test_tokenizer_training_prints_nothing(capfd):
    from captioning.synthetic import train_tokenizer

    train_tokenizer(["Two Eggs on a Plate", "A Bowl of Soup"])
    assert capfd.readouterr() == ("", "")


def test_demo_on_a_cleaned_folder_and_its_label(synth, tmp_path):
    pick_data = load("demo.py").pick_data
    opts = dict(data_dir=None, images_dir=None, dataset=None)
    cleaned = tmp_path / "data_clean"
    cleaned.mkdir()
    with pytest.raises(UserError, match="set --images-dir"):
        pick_data(argparse.Namespace(**{**opts, "data_dir": str(cleaned)}), tmp_path)
    data, images, label = pick_data(argparse.Namespace(**{**opts, "data_dir": str(cleaned),
                                                          "images_dir": str(synth / "images")}), tmp_path)
    assert (data, images) == (cleaned, synth / "images") and "synthetic" not in label and "data_clean" in label
    assert pick_data(argparse.Namespace(**opts), tmp_path)[2] == "synthetic data"


def test_gitignore_keeps_the_readme_data_folders_out():
    lines = (ROOT / ".gitignore").read_text().splitlines()
    assert "/data/" in lines and "/data_clean/" in lines


def test_metrics_json_of_a_dataset_run_is_readable(tmp_path):
    """metrics.json of a photos run (no references) says so; the report's table leaves it out."""
    from captioning.report import results_table

    run = tmp_path / "photos"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"info": {"method": "inferllama", "images": 3, "scored": False}}))
    assert "photos" not in results_table([run], tmp_path)


def test_a_hub_model_not_in_the_cache_is_one_sentence_at_once(monkeypatch):
    """Offline: the doctor's fix, not "neither a model folder nor a hub id"; online with the hub out of
    reach: one quick request, not half a minute of retries ending in raw connection errors."""
    from huggingface_hub import constants

    from captioning.loading import check_local_or_hub

    name = "someone/food-model-not-cached"
    with pytest.raises(UserError, match=f"not in the Hugging Face cache and HF_HUB_OFFLINE is set: .*hf download {name}"):
        check_local_or_hub(name)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")  # nothing listens there
    with pytest.raises(UserError, match="the hub cannot be reached"):  # from our one request, not from_pretrained
        check_local_or_hub(name)


@pytest.mark.parametrize("script", ["task1/vit_gpt2_finetuned.py", "task1/vit_gpt2_attention.py",
                                    "task1/vit_gpt2_teacherF.py", "task1/vit_gpt2_finetuned_nuclear.py",
                                    "task1/vit_gpt2_finetuned_RL.py", "task1/blip.py", "task2/train.py",
                                    "task2/vlm_lora.py"])
def test_training_scripts_check_data_and_output_folders_before_loading_a_model(script, tmp_path):
    """A typo in --data-dir, or a finished run in --output-dir, is one sentence before the model loads (a
    7B chat model takes minutes): the model named here does not exist, and it is not what the error names."""
    main = load(script).main
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    args = ["--model", str(tmp_path / "no-such-model"), "--output-dir", str(tmp_path / "run")]
    with pytest.raises(UserError, match="data folder .*nope does not exist"):
        main(args + ["--data-dir", str(tmp_path / "nope")])
    with pytest.raises(UserError, match="images folder .* does not exist"):
        main(args + ["--data-dir", str(data), "--images-dir", str(tmp_path / "no-images")])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a finished run"):
        main(args + ["--data-dir", str(data)])
    assert (tmp_path / "run" / "metrics.json").read_text() == "{}"
