"""task2/deepseek.py and captioning.vlm: chat answers -> titles, model class from the config, the
whole script on the tiny random DeepSeek-VL hybrid (batched == one at a time, hostile rows skipped),
clean failures."""
import importlib.util
import json
import shutil

import pandas as pd
import pytest

from captioning.config import UserError
from captioning.metrics import METRIC_KEYS
from captioning.vlm import clean_title, model_class
from conftest import ROOT, assert_clean_failure, run_cli

# Answers of the kind chat VLMs really give to "Put a short title to the dish in this image".
ANSWERS = [
    ('"Lemon Garlic Roast Chicken"', "Lemon Garlic Roast Chicken"),
    ("Title: Spicy Shrimp Tacos", "Spicy Shrimp Tacos"),
    ("**Title:** Classic Beef Stew", "Classic Beef Stew"),
    ("Sure! Here's a short title for the dish:\n\n**Creamy Tomato Basil Soup**", "Creamy Tomato Basil Soup"),
    ("The dish in this image is a chocolate lava cake.", "chocolate lava cake"),
    ("Grilled Salmon with Asparagus. The salmon is seared and served with asparagus spears.",
     "Grilled Salmon with Asparagus"),
    ('Here is a title: "Grandma\'s Apple Pie". This classic dessert is a favourite.', "Grandma's Apple Pie"),
    ("Spaghetti Carbonara – a classic Roman pasta dish with eggs and pancetta", "Spaghetti Carbonara"),
    ("This is Pad Thai.", "Pad Thai"),
    ("1. Blueberry Pancakes\n2. Fluffy Breakfast Stack", "Blueberry Pancakes"),
    ("A short title for this dish could be 'Mediterranean Quinoa Salad'.", "Mediterranean Quinoa Salad"),
    ("Certainly! Here is a short title for the dish in this image: Golden Fried Chicken",
     "Golden Fried Chicken"),
    ("Sure thing! Lemon Tart", "Lemon Tart"),
    ("Title: Chicken Pot Pie\n\nDescription: A comforting classic with a flaky crust.", "Chicken Pot Pie"),
    ("Based on the image, a good title would be: Rustic Apple Galette", "Rustic Apple Galette"),
    ("This dish is called Beef Stew.", "Beef Stew"),
    ("I would call it \"Summer Berry Tart\".", "Summer Berry Tart"),
    ("“Roasted Beet Salad”", "Roasted Beet Salad"),
    ("Peanut Butter Cookies (a crunchy, sweet treat)", "Peanut Butter Cookies"),
    ("# Mushroom Risotto", "Mushroom Risotto"),
    ("Honey-Glazed Carrots!", "Honey-Glazed Carrots"),
    # titles that must come through untouched
    ("St. Louis-Style Ribs", "St. Louis-Style Ribs"),
    ("Mom's Meatloaf", "Mom's Meatloaf"),
    ("The Best Chocolate Cake", "The Best Chocolate Cake"),
    ("Absolutely Perfect Brownies", "Absolutely Perfect Brownies"),
    ("A Red Bowl of Three Olives", "A Red Bowl of Three Olives"),
    ("Pasta with Pesto (Genovese)", "Pasta with Pesto (Genovese)"),
    ("", ""),
]


@pytest.mark.parametrize("answer,title", ANSWERS)
def test_clean_title(answer, title):
    assert clean_title(answer) == title


def test_model_class_comes_from_the_config():
    from transformers import DeepseekVLConfig, DeepseekVLHybridConfig, LlamaConfig, MllamaConfig

    assert model_class(DeepseekVLHybridConfig()).__name__ == "DeepseekVLHybridForConditionalGeneration"
    assert model_class(DeepseekVLConfig()).__name__ == "DeepseekVLForConditionalGeneration"  # the 1.3B
    assert model_class(MllamaConfig()).__name__ == "MllamaForConditionalGeneration"  # Llama 3.2 Vision
    assert model_class(LlamaConfig()) is None  # text only: not a captioner


def load_script():
    spec = importlib.util.spec_from_file_location("deepseek_script", ROOT / "task2" / "deepseek.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hostile(synth, tmp_path_factory):
    """A copy of 12 valid + 12 test rows, plus a truncated image, a text file named .jpg,
    a missing image and a name that tries to leave the images folder (in test)."""
    d = tmp_path_factory.mktemp("hostile")
    (d / "images").mkdir()
    for split in ("train", "valid", "test"):
        df = pd.read_csv(synth / f"{split}_data.csv", dtype=str, keep_default_na=False)
        df = df[~df["Image_Name"].str.startswith("zz-")].head(12)
        for name in df["Image_Name"]:
            shutil.copy(synth / "images" / f"{name}.jpg", d / "images" / f"{name}.jpg")
        if split == "test":
            good = (d / "images" / f"{df['Image_Name'].iloc[0]}.jpg").read_bytes()
            (d / "images" / "zz-broken.jpg").write_bytes(good[: len(good) // 3])
            (d / "images" / "zz-text.jpg").write_text("not a picture")
            bad = [("Broken Pie", "zz-broken"), ("Text Tart", "zz-text"), ("Lost Loaf", "zz-missing"),
                   ("Secret Stew", "../models/deepseek-vl/config")]
            df = pd.concat([df, pd.DataFrame(bad, columns=["Title", "Image_Name"])], ignore_index=True)
        df.to_csv(d / f"{split}_data.csv", index=False)
    return d


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription (10x faster)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_script_end_to_end_batched_equals_single(synth, hostile, tmp_path, capsys, one_thread):
    script = load_script()
    common = ["--data-dir", str(hostile), "--model", str(synth / "models" / "deepseek-vl"),
              "--prompt", "few-shot", "--shots", "3", "--max-new-tokens", "8", "--hf-token", "hf_SECRET123"]
    metrics = script.main(common + ["--output-dir", str(tmp_path / "b4"), "--batch-size", "4"])
    out = capsys.readouterr()
    assert "hf_SECRET123" not in out.out + out.err
    for name in ("zz-broken", "zz-text", "unsafe image name", "missing image"):
        assert name in out.err, (name, out.err[-2000:])
    assert set(metrics) == {"valid", "test"}
    run = tmp_path / "b4"
    saved = json.loads((run / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert list(saved[split])[:len(METRIC_KEYS)] == list(METRIC_KEYS)
    assert saved["info"]["model_class"] == "DeepseekVLHybridForConditionalGeneration"
    train_titles = set(pd.read_csv(hostile / "train_data.csv")["Title"])
    assert sum(t in saved["info"]["question"] for t in train_titles) == 3  # the few-shot examples
    assert "hf_SECRET123" not in (run / "config.json").read_text()
    preds = pd.read_csv(run / "predictions.csv", dtype=str, keep_default_na=False)
    assert len(preds) == 12 and not preds["Image_Name"].str.startswith("zz-").any()
    answers = [json.loads(x) for x in (run / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 24 and [a["title"] for a in answers[12:]] == preds["prediction"].tolist()
    assert preds["prediction"].nunique() > 1  # the tiny model's answers depend on the image

    script.main(common + ["--output-dir", str(tmp_path / "b1"), "--batch-size", "1"])
    for name in ("predictions.csv", "predictions_valid.csv"):
        assert (tmp_path / "b1" / name).read_text() == (run / name).read_text()


def test_bad_models_stop_with_one_sentence(synth, tmp_path):
    from transformers import LlamaConfig

    script = load_script()
    data = ["--data-dir", str(synth), "--limit", "2"]
    captioner = str(synth / "models" / "vit-gpt2")
    with pytest.raises(UserError, match="not a chat model"):  # a captioner without a chat template
        script.main([*data, "--model", captioner, "--output-dir", str(tmp_path / "v")])
    LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(tmp_path / "lm")
    with pytest.raises(UserError, match="not an image-text-to-text chat model"):  # stops at its config
        script.main(data + ["--model", str(tmp_path / "lm"), "--output-dir", str(tmp_path / "c")])
    with pytest.raises(UserError, match="does not exist"):
        script.main(data + ["--model", str(tmp_path / "no-such-model"), "--output-dir", str(tmp_path / "b")])


def test_left_padded_batch_equals_one_at_a_time(synth, one_thread):
    """Questions of different lengths force padding: every row must still get its own answer."""
    from captioning.data import load_image
    from captioning.vlm import chat_answers, load_chat_vlm

    model, processor = load_chat_vlm(str(synth / "models" / "deepseek-vl"))
    assert processor.tokenizer.padding_side == "left"
    images = [load_image(p) for p in sorted((synth / "images").glob("dish-*.jpg"))[:4]]
    questions = ["Title?", "Put a short title to the dish in this image", "Name it.",
                 "What is the title of the recipe for the dish in this image? Answer with the title only."]
    batched = chat_answers(model, processor, images, questions, do_sample=False, max_new_tokens=6)
    single = [chat_answers(model, processor, [im], q, do_sample=False, max_new_tokens=6)[0]
              for im, q in zip(images, questions)]
    assert batched == single and len(set(batched)) > 1


@pytest.mark.skipif(importlib.util.find_spec("deepseek_vl") is not None, reason="deepseek_vl is installed")
def test_original_backend_says_how_to_install(synth, tmp_path):
    proc = run_cli(ROOT / "task2" / "deepseek.py", "--data-dir", synth, "--backend", "deepseek_vl",
                   "--output-dir", tmp_path / "run")
    assert_clean_failure(proc, "pip install git+https://github.com/deepseek-ai/DeepSeek-VL")
    assert not (tmp_path / "run").exists()  # stopped before writing anything
