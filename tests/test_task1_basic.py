"""task1_1 and vit_gpt2_finetuned end to end on the tiny model; their answers to bad input."""
import json

import pandas as pd
import pytest

from captioning.metrics import ALL_KEYS, METRIC_KEYS
from conftest import assert_clean_failure, run_cli


def check_run_folder(out, trained=True):
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) >= {"valid", "test"}
    for split in ("valid", "test"):
        assert list(m[split])[:len(METRIC_KEYS)] == list(METRIC_KEYS) and set(m[split]) == {*ALL_KEYS, "images"}
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert m["test"]["images"] == len(pred)
    assert list(pred.columns[:3]) == ["Image_Name", "reference", "prediction"] and len(pred) > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["output_dir"] == str(out)
    if trained:
        assert (out / "best" / "model.safetensors").exists()
        assert (out / "checkpoint" / "latest.json").exists()
        assert [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()] == [1]
    return m


def test_task1_1_end_to_end(synth, tmp_path):
    out = tmp_path / "t11"
    p = run_cli("task1/task1_1.py", "--model", synth / "models" / "vit-gpt2", "--data-dir", synth,
                "--output-dir", out, "--preset", "greedy", "--max-new-tokens", "8",
                "--clip-model", synth / "models" / "clip", "--bertscore-model", synth / "models" / "bert")
    assert p.returncode == 0, p.stderr[-3000:]
    m = check_run_folder(out, trained=False)
    # the scores beyond n-grams, with the tiny CLIP and BERT, and how each was computed
    for split in ("valid", "test"):
        assert all(isinstance(m[split][k], float) for k in ("CLIPScore", "RefCLIPScore", "BERTScore", "Copied"))
    assert "2.5 * max(cos, 0)" in m["info"]["scorers"]["CLIPScore"]
    assert "layer 2, idf off, rescaled with baseline" in m["info"]["scorers"]["BERTScore"]
    assert m["info"]["eval_seconds"]["test"]["new metrics"] > 0
    assert "RefCLIPScore" in p.stdout
    assert "task1_1" in p.stdout and "CIDEr" in p.stdout
    # the blank (grey) image of the valid split loads fine: it is captioned, not skipped
    assert "zz-blank" in (out / "predictions_valid.csv").read_text()


def test_finetuned_one_epoch_and_freeze(synth, tmp_path):
    out = tmp_path / "ft"
    p = run_cli("task1/vit_gpt2_finetuned.py", "--model", synth / "models" / "vit-gpt2", "--data-dir", synth,
                "--output-dir", out, "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--freeze", "vit",
                "--workers", "0", "--preset", "greedy", "--max-new-tokens", "8", "--limit", "40")
    assert p.returncode == 0, p.stderr[-3000:]
    check_run_folder(out)
    assert "freeze=vit" in p.stdout
    assert "train: skipped" in p.stderr and "zz-missing-photo" in p.stderr  # counted, named skips
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args,words", [
    (["--data-dir", "/nonexistent"], "does not exist"),
    (["--freeze", "everything"], "invalid choice"),
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--epochs", "two"], "invalid int"),
])
def test_finetuned_bad_arguments(synth, tmp_path, args, words):
    base = ["--model", str(synth / "models" / "vit-gpt2"), "--data-dir", str(synth), "--output-dir", str(tmp_path / "o")]
    p = run_cli("task1/vit_gpt2_finetuned.py", *base, *args)
    assert_clean_failure(p, words)


def test_unwritable_output_dir(synth, tmp_path):
    blocker = tmp_path / "file"  # a file where the output folder's parent should be
    blocker.write_text("mine")
    p = run_cli("task1/task1_1.py", "--model", synth / "models" / "vit-gpt2", "--data-dir", synth,
                "--output-dir", blocker / "run")
    assert_clean_failure(p, "cannot")
    assert blocker.read_text() == "mine"


def test_help_lists_freeze_options():
    p = run_cli("task1/vit_gpt2_finetuned.py", "--help")
    assert p.returncode == 0
    for word in ("gpt2-last4", "freeze the deepest 4 GPT-2 blocks", "--resume", "--epochs", "--lr"):
        assert word in p.stdout
