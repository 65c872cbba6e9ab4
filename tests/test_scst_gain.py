"""bench/scst_gain.py: SCST against its cross-entropy start on fresh held-out splits, paired per image."""
import json
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, assert_clean_failure, run_cli

sys.path.insert(0, str(ROOT / "bench"))


def test_scst_gain_pairs_the_same_test_images(synth, tmp_path):
    from scst_gain import per_image_cider

    out = tmp_path / "gain"
    p = run_cli("bench/scst_gain.py", "--xe", synth / "models" / "vit-gpt2", "--data-dir", synth,
                "--images-dir", synth / "images", "--seeds", "0", "--valid", "12", "--test", "16", "--out", out,
                "--", "--lr", "3e-3", "--epochs", "1", "--batch-size", "16", "--samples", "2", "--baseline", "mean",
                "--max-new-tokens", "6", "--limit", "32", env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "scst_gain.json").read_text())
    xe, scst = per_image_cider(out / "xe"), per_image_cider(out / "scst-seed0")
    assert len(xe) == len(scst) == 16
    names = [pd.read_csv(out / run / "predictions.csv")["Image_Name"].tolist() for run in ("xe", "scst-seed0")]
    assert names[0] == names[1]  # the same fresh test images, in the same order, on both sides
    # per-image scores average to the corpus CIDEr each run reported, and the change is theirs
    assert xe.mean() == pytest.approx(res["xe"]["test"]["CIDEr"], abs=1e-9)
    run = res["runs"][0]
    assert scst.mean() == pytest.approx(run["test"]["CIDEr"], abs=1e-9)
    assert run["change"] == pytest.approx(run["test"]["CIDEr"] - res["xe"]["test"]["CIDEr"], abs=1e-9)
    low, high = run["interval"]
    assert low <= run["change"] <= high
    assert run["images_better"] + run["images_worse"] == int(((scst - xe) != 0).sum())
    assert "SCST seed 0" in (out / "SCST.md").read_text()
    # the drawn images never collide with the training images
    drawn = set(pd.read_csv(out / "data" / "test_data.csv")["Image_Name"])
    ours = set().union(*(pd.read_csv(synth / f"{s}_data.csv")["Image_Name"] for s in ("train", "valid", "test")))
    assert drawn and not drawn & ours


def test_paired_bootstrap_interval():
    from scst_gain import paired_bootstrap

    assert paired_bootstrap(np.full(50, 0.25)) == pytest.approx((0.25, 0.25))
    rng = np.random.default_rng(1)
    low, high = paired_bootstrap(rng.normal(0.1, 1.0, 4000))
    assert low < 0.1 < high and high - low < 0.1  # ~ +-1.96 sd / sqrt(n)


def test_scst_gain_without_a_model_is_one_sentence(tmp_path):
    p = run_cli("bench/scst_gain.py", "--xe", tmp_path / "nothing", "--out", tmp_path / "o")
    assert_clean_failure(p, "make demo")


def test_scst_gain_refuses_a_folder_it_did_not_write(synth, tmp_path):
    mine = tmp_path / "out" / "data" / "train_data.csv"
    mine.parent.mkdir(parents=True)
    mine.write_text("Title,Image_Name\nmy own split,x\n")
    p = run_cli("bench/scst_gain.py", "--xe", synth / "models" / "vit-gpt2", "--data-dir", synth,
                "--images-dir", synth / "images", "--out", tmp_path / "out")
    assert_clean_failure(p, "another --out")
    assert mine.read_text() == "Title,Image_Name\nmy own split,x\n"


def test_scst_gain_without_the_training_images_is_one_sentence(synth, tmp_path):
    p = run_cli("bench/scst_gain.py", "--xe", synth / "models" / "vit-gpt2", "--data-dir", synth,
                "--images-dir", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert_clean_failure(p, "not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run_cli("bench/scst_gain.py", "--xe", synth / "models" / "vit-gpt2", "--data-dir", synth,
                "--images-dir", empty, "--out", tmp_path / "out2")
    assert_clean_failure(p, "none of the images")
