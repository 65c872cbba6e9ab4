"""The cost of the scores beyond n-grams (CLIPScore, RefCLIPScore, BERTScore, exact match, novelty,
diversity: captioning.semantic) in a run's final evaluation.

    python bench/bench_semantic.py            # a few minutes on 2 quiet cores
    python bench/bench_semantic.py --quick    # tiny models: checks the plumbing in seconds

A run's evaluation of a split is what engine.evaluate_splits does: batched beam search (4 beams), then
the n-gram metrics (pycocoevalcap), then the new scores; it records the seconds of each part in
metrics.json (info.eval_seconds), which is what is read here. Models have random weights at the real
architectures' sizes: the captioner as nlpconnect/vit-gpt2-image-captioning (ViT-B/16 224 px, 12
layers + GPT-2 12 layers, vocabulary 50257), CLIP as openai/clip-vit-base-patch32 (ViT-B/32 + a
12-layer 512-wide text tower), and for BERTScore a BERT of roberta-large's size (24 layers, width
1024) matched at layer 17 as bert-score does for roberta-large. Captions are cut at 12 tokens, about
a real title's length (a random model never stops by itself). The references are the titles of
drawn dishes saved at the Kaggle photos' size.

The new scores are timed on real titles (other images' titles; a random captioner's ids mostly
decode to nothing, which they would skip), twice: "cold" loads CLIP and the BERT and embeds every
image, "warm" (a later run in the same process, or any later run on these images for CLIP) finds
the image embeddings in the feature cache and the references' CLIP embeddings in memory. The figure
is the new scores' share of the whole evaluation (captioning + n-gram metrics + new scores), cold.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CLIP_B32 = dict(text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                          max_position_embeddings=77, vocab_size=49408),
                vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            patch_size=32),
                image_size=224, projection_dim=512)
BERT_LARGE = dict(width=1024, layers=24, heads=16, mlp=4096)


def run(images: int = 64, quick: bool = False, log=print) -> dict:
    import random

    import torch

    from bench_train import QUICK, Size, build_model, make_photos
    from captioning.cache import pixel_datasets
    from captioning.config import quiet_libraries
    from captioning.engine import Run, evaluate_splits
    from captioning.metrics import evaluate_captions
    from captioning.models import load_vit_gpt2, vit_gpt2_recipe
    from captioning.semantic import evaluate_all, options
    from captioning.synthetic import build_tiny_bert, build_tiny_clip
    from demo import load_script

    quiet_libraries()
    size = replace(QUICK, eval=4) if quick else Size(enc_layers=12, dec_layers=12, train=0, valid=0, eval=images)
    layer = 1 if quick else 17
    res: dict = {"images": size.eval, "bertscore_layer": layer}
    with tempfile.TemporaryDirectory(prefix="bench-semantic-") as tmp:
        tmp = Path(tmp)
        log("  building random models at the real sizes ...")
        titles = make_photos(tmp / "data", size)
        model_dir = build_model(tmp / "captioner", size, titles)
        build_tiny_clip(tmp / "clip", steps=0, **({} if quick else CLIP_B32))
        build_tiny_bert(tmp / "bert", baseline_pairs=0, **({} if quick else BERT_LARGE))
        evaluate_captions(["a dish"], ["a dish"])  # METEOR's JVM: started by validation in a training run
        model, processor, tokenizer = load_vit_gpt2(str(model_dir))
        cfg = load_script("task1/task1_1.py").Config(
            model=str(model_dir), data_dir=str(tmp / "data" / "eval"), images_dir=str(tmp / "data" / "images"),
            output_dir=str(tmp / "run"), cache_dir=str(tmp / "cache"), batch_size=32, preset="beam",
            max_new_tokens=6 if quick else 12, workers=2, clip_model=str(tmp / "clip"),
            bertscore_model=str(tmp / "bert"), bertscore_layer=layer)
        test = pixel_datasets(cfg, processor, ("test",))["test"]
        refs = [r.references for r in test.records]
        # A random captioner's ids mostly lie outside its small tokenizer and decode to nothing, which
        # the new scores would skip: they are timed on real titles instead (other images' titles).
        rng = random.Random(0)

        def other_titles():
            return rng.sample([r.title for r in test.records], len(test))

        log(f"  the new scores on {len(test)} titles, cold (loading CLIP and the BERT, embedding the images) ...")
        _, cold = evaluate_all(other_titles(), refs, test.records, None, **options(cfg))
        log(f"  a run's evaluation of {len(test)} images (beam search, 4 beams) ...")
        evaluate_splits(Run(cfg, "bench"), cfg, vit_gpt2_recipe(model, processor, tokenizer, cfg).caption, model,
                        {"test": test}, torch.device("cpu"))
        run_sec = json.loads((tmp / "run" / "metrics.json").read_text())["info"]["eval_seconds"]["test"]
        _, warm = evaluate_all(other_titles(), refs, test.records, None, **options(cfg))
    base = run_sec["captioning"] + run_sec["n-gram metrics"]
    for name, about in (("cold", cold), ("warm", warm)):
        new = about["seconds"]["new metrics"]
        res[name] = {"captioning": run_sec["captioning"], "n-gram metrics": run_sec["n-gram metrics"],
                     "new metrics": new, "share": new / (base + new), "scorers": about["scorers"]}
        log(f"    {name}: captioning {run_sec['captioning']:.1f} s, n-gram metrics {run_sec['n-gram metrics']:.1f} s, "
            f"new metrics {new:.1f} s = {res[name]['share']:.0%} of the evaluation")
    res["semantic_share"] = res["cold"]["share"]
    res["semantic_share_warm"] = res["warm"]["share"]
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models, a few images")
    p.add_argument("--images", type=int, default=64, help="test images evaluated (default 64)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = run(a.images, a.quick)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
