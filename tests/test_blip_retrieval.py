"""BLIP (captioning.blip, task1/blip.py) and the retrieval baselines (captioning.retrieval, task1/baselines.py)."""
import importlib.util
import shutil

import pandas as pd
import torch

from captioning.captioner import load_captioner
from captioning.data import load_image
from captioning.retrieval import Retrieval, neighbours
from conftest import ROOT


def script(name):
    spec = importlib.util.spec_from_file_location(f"_{name}", ROOT / "task1" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blip_targets_start_from_dec_and_skip_padding(synth):
    from captioning.blip import blip_targets, load_blip

    model, processor = load_blip(str(synth / "models" / "blip"))
    dec = model.config.text_config.bos_token_id
    ids, mask, labels = blip_targets(processor.tokenizer, ["Two Eggs on a Red Plate", "One Lime"], dec)
    assert (ids[:, 0] == dec).all() and dec == processor.tokenizer.convert_tokens_to_ids("[DEC]")
    assert (labels[mask == 0] == -100).all() and (labels[mask == 1] != -100).all()
    assert labels[1, mask[1].sum() - 1] == model.config.text_config.sep_token_id  # [SEP] ends the title


def test_blip_lora_run_round_trips_through_the_captioner(synth, tmp_path, one_thread):
    out = tmp_path / "blip"
    script("blip").main(["--model", str(synth / "models" / "blip"), "--data-dir", str(synth), "--output-dir", str(out),
                         "--limit", "32", "--epochs", "1", "--lr", "5e-3", "--batch-size", "16", "--workers", "0",
                         "--preset", "greedy", "--lora", "r8", "--cache-dir", str(tmp_path / "cache")])
    assert (out / "best" / "adapter" / "adapter_model.safetensors").is_file()
    preds = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    cap = load_captioner(out, device="cpu")
    assert cap.describe()["family"] == "blip"
    images = [load_image(synth / "images" / f"{n}.jpg") for n in preds["Image_Name"][:8]]
    assert [c.title for c in cap.caption(images)] == preds["prediction"][:8].tolist()


def test_retrieval_never_returns_the_query_itself():
    bank = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    idx = neighbours(bank[:2], bank, 2, ["a", "b"], ["a", "b", "c", "d", "e"])
    assert 0 not in idx[0].tolist() and 1 not in idx[1].tolist()
    r = Retrieval(bank, ["t0", "t1", "t2", "t3", "t4"], ["a", "b", "c", "d", "e"])
    assert r.nearest(bank[:1], ["a"]) != ["t0"] and r.nearest(bank[:1], ["zz"]) == ["t0"]


def test_baselines_never_read_the_test_titles(synth, tmp_path, one_thread):
    """The same data with every test title replaced gives the same test predictions, for each method."""
    blind = tmp_path / "blind"
    blind.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copy(synth / f"{split}_data.csv", blind / f"{split}_data.csv")
    test = pd.read_csv(blind / "test_data.csv", dtype=str, keep_default_na=False)
    test["Title"] = "Nothing on a Plate"
    test.to_csv(blind / "test_data.csv", index=False)
    baselines = script("baselines")
    for method in ("nearest", "consensus", "constant"):
        preds = []
        for data in (synth, blind):
            out = tmp_path / f"{method}-{data.name}"
            baselines.main(["--data-dir", str(data), "--images-dir", str(synth / "images"), "--method", method,
                            "--encoder", str(synth / "models" / "vit"), "--output-dir", str(out), "--workers", "0",
                            "--cache-dir", str(tmp_path / "cache")])
            preds.append(pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False))
        assert preds[0]["prediction"].tolist() == preds[1]["prediction"].tolist()
        assert "Nothing on a Plate" not in set(preds[1]["prediction"])
        train = set(pd.read_csv(synth / "train_data.csv", dtype=str)["Title"])
        assert set(preds[0]["prediction"]) <= train  # only training titles are ever returned
    cap = load_captioner(tmp_path / f"consensus-{synth.name}", device="cpu")
    first = preds[0]["Image_Name"][0]
    assert cap.caption([load_image(synth / "images" / f"{first}.jpg")])[0].title in train


def test_retrieved_prompt_shows_only_other_training_photos_titles(synth, tmp_path, one_thread):
    """deepseek.py --prompt retrieved: a test photo that is also in train (same name, leaked) never sees its own
    training title, and the examples do not depend on the test titles."""
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("_deepseek_retrieved", ROOT / "task2" / "deepseek.py")
    deepseek = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deepseek)
    test = pd.read_csv(synth / "test_data.csv", dtype=str, keep_default_na=False)
    leaked = test["Image_Name"].iloc[0]
    questions = []
    for variant in ("a", "b"):
        d = tmp_path / variant
        d.mkdir()
        shutil.copy(synth / "valid_data.csv", d / "valid_data.csv")
        train = pd.read_csv(synth / "train_data.csv", dtype=str, keep_default_na=False)
        pd.concat([train, pd.DataFrame([{"Title": "Leaked Title", "Image_Name": leaked}])]).to_csv(
            d / "train_data.csv", index=False)
        (test.assign(Title="Nothing on a Plate") if variant == "b" else test).to_csv(d / "test_data.csv", index=False)
        cfg = SimpleNamespace(data_dir=str(d), images_dir=str(synth / "images"), dataset="", limit=0, shots=3,
                              retrieval_encoder=str(synth / "models" / "vit"), hf_token="", workers=0,
                              cache_dir=str(tmp_path / "cache"))
        questions.append(deepseek.retrieved_questions(cfg, None))
    assert questions[0] == questions[1] and leaked in questions[0]
    assert "Leaked Title" not in questions[0][leaked] and "Nothing on a Plate" not in "".join(questions[1].values())
    assert questions[0][leaked].count("\n- ") == 3
