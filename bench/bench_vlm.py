"""Chat-VLM LoRA epoch: the vision side's outputs cached (task2/vlm_lora.py's default) against running the
vision tower on every step (--cache-vision no), side by side on the same model, data and machine, for two
chat VLMs at their real widths (random weights):

  smolvlm     HuggingFaceTB/SmolVLM-256M-Instruct (the headline `vlm_cache_speedup`): a SigLIP-B/16 tower
              at 512 px (1024 patches, width 768, MLP 3072), a pixel-shuffle connector (scale factor 4: 64
              image tokens per image) and SmolLM2-135M (width 576, MLP 1536, 9 heads, 3 KV heads,
              vocabulary 49,280). Depth in the real ratio, 2 tower layers to 5 LM layers (12 : 30). One
              512 px crop per image (do_image_splitting=False); the hub processor's default splitting
              into up to 16 crops + the whole image runs the tower up to 17 times per photo, so the
              tower's share, and what the cache saves, only grows.
  deepseek-vl DeepSeek-VL 1.3B chat's widths, LLaVA-style: a 384 px / patch 16 tower 1024 wide (576 image
              tokens, as SigLIP-L) and a language model 2048 wide (MLP 5632, vocabulary 32,000); one layer
              each (24 : 24 in the real model). Its 576 image tokens go through the LM, so the LM's share is
              large and the cache buys much less.

LoRA r16 on the language model, batch 4, fp32 on the CPU; the vision features are computed once before the
cached epochs and not counted (they are computed once per image, ever). The uncached side also runs the
processor (resize, normalise) every step, as training without the cache does. Epochs alternate between
the two sides and each side's best counts, so another user's load hits both alike.

    python bench/bench_vlm.py            # ~2 minutes on 2 cores
"""
from __future__ import annotations

import time

import torch


def build_smolvlm(quick: bool = False):
    """SmolVLM-256M-Instruct's widths (Idefics3 classes, as on the hub), depth 2 : 5."""
    from captioning.synthetic import all_captions, tiny_smolvlm, train_tokenizer

    if quick:
        image, patch, vision, text = 64, 16, dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1,
                                                   num_attention_heads=2), dict(vocab_size=1000)
    else:
        image, patch = 512, 16
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12)
        text = dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=5,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                    initializer_range=0.02)
    model, processor = tiny_smolvlm(train_tokenizer(all_captions(), vocab_size=400), image_size=image, patch=patch,
                                    scale_factor=4, vision=vision, text=text, head=1.0)
    size = {"model": "SmolVLM-256M-Instruct" + (" (--quick: tiny)" if quick else ""), "image": image, "patch": patch,
            "vision_width": vision["hidden_size"], "vision_mlp": vision["intermediate_size"],
            "text_width": model.config.text_config.hidden_size, "mlp": model.config.text_config.intermediate_size,
            "vocab": model.config.text_config.vocab_size, "patches": (image // patch) ** 2,
            "image_tokens": (image // patch) ** 2 // 16,
            "layers": f"{vision['num_hidden_layers']} + {model.config.text_config.num_hidden_layers}",
            "real_layers": "12 + 30"}
    return model.eval(), processor, size


def build_deepseek_vl(quick: bool = False):
    """LLaVA-style at DeepSeek-VL 1.3B chat's widths, one layer each."""
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from captioning.synthetic import TINY_CHAT_TEMPLATE, all_captions, chat_tokenizer, train_tokenizer

    tok = chat_tokenizer(train_tokenizer(all_captions(), vocab_size=400))
    ids = {key: getattr(tok, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    image, patch, vw, tw, mlp, vocab = (64, 16, 64, 128, 256, 1000) if quick else (384, 16, 1024, 2048, 5632, 32000)
    vision = CLIPVisionConfig(image_size=image, patch_size=patch, hidden_size=vw, intermediate_size=4 * vw,
                              num_hidden_layers=1, num_attention_heads=max(1, vw // 64))
    text = LlamaConfig(vocab_size=vocab, hidden_size=tw, intermediate_size=mlp, num_hidden_layers=1,
                       num_attention_heads=max(1, tw // 128), num_key_value_heads=max(1, tw // 128),
                       max_position_embeddings=2048, **ids)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-1,
                                                      vision_feature_select_strategy="default",
                                                      image_token_id=tok.convert_tokens_to_ids(tok.image_token)))
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    processor = LlavaProcessor(CLIPImageProcessorPil(size={"shortest_edge": image},
                                                     crop_size={"height": image, "width": image}),
                               tok, patch_size=patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=TINY_CHAT_TEMPLATE)
    size = {"model": "DeepSeek-VL 1.3B chat" + (" (--quick: tiny)" if quick else ""), "image": image, "patch": patch,
            "vision_width": vw, "vision_mlp": 4 * vw, "text_width": tw, "mlp": mlp, "vocab": vocab, "patches": (image // patch) ** 2,
            "image_tokens": (image // patch) ** 2, "layers": "1 + 1", "real_layers": "24 + 24"}
    return model.eval(), processor, size


CASES = {"smolvlm": build_smolvlm, "deepseek-vl": build_deepseek_vl}


def measure(name: str, quick: bool, images: int, batch: int, rounds: int, log=print) -> dict:
    """Epoch seconds with the vision tower run every step and with its outputs cached, alternated."""
    import numpy as np
    from PIL import Image

    from captioning.engine import make_adamw
    from captioning.synthetic import all_captions
    from captioning.vlm_lora import ChatLoRA, add_lora, encode_images

    model, processor, size = CASES[name](quick)
    model = add_lora(model, "r16")
    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 255, (size["image"], size["image"], 3), dtype=np.uint8))
            for _ in range(images)]
    titles = all_captions()[:images]
    chat = ChatLoRA(model, processor, "Title:")
    prompts, feats = encode_images(model, processor, pics, "Title:")  # once per image, ever (not timed)
    assert feats is not None, f"{name}: the vision outputs cannot be cached"

    class Cfg:
        lr, weight_decay = 1e-4, 0.0

    def epoch(cached: bool) -> float:
        opt = make_adamw([p for p in model.parameters() if p.requires_grad], Cfg)
        model.train()
        t0 = time.perf_counter()
        for start in range(0, images, batch):
            b = {"prompt": prompts[start:start + batch], "caption": titles[start:start + batch]}
            if cached:
                b["features"] = feats[start:start + batch]
            else:
                b["image"] = pics[start:start + batch]
            chat.loss(model, b).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    epoch(True)  # warm-up: allocator, kernels
    tower, cached = [], []
    for _ in range(rounds):  # alternate, keep the best of each (another user's load hits both)
        tower.append(epoch(False))
        cached.append(epoch(True))
    out = {"size": {**size, "images": images, "batch": batch, "sequence": max(len(p) for p in prompts)},
           "tower": {"epoch_seconds": min(tower), "epochs_seconds": tower},
           "cached": {"epoch_seconds": min(cached), "epochs_seconds": cached}}
    out["speedup"] = out["tower"]["epoch_seconds"] / out["cached"]["epoch_seconds"]
    log(f"[vlm] {size['model']} widths: tower every step {min(tower):.2f} s, cached {min(cached):.2f} s per "
        f"epoch of {images} images: {out['speedup']:.2f}x")
    return out


def describe(s: dict) -> str:
    """One line of widths for a case's size record."""
    return (f"{s['model']} widths: {s['image']} px / patch {s['patch']} ({s['patches']} patches -> "
            f"{s['image_tokens']} image tokens), tower width {s['vision_width']} (MLP {s['vision_mlp']}), LM width "
            f"{s['text_width']} (MLP {s['mlp']}, vocabulary {s['vocab']:,}), layers {s['layers']} (real "
            f"{s['real_layers']})")


def run(quick: bool = False, images: int = 8, batch: int = 4, rounds: int = 3, log=print) -> dict:
    from bench_train import same_cpu_settings

    same_cpu_settings()  # both sides alike, whichever runs first
    if quick:
        images, batch, rounds = 4, 2, 1
    out = {name: measure(name, quick, images, batch, rounds, log) for name in CASES}
    out["vlm_cache_speedup"] = out["smolvlm"]["speedup"]  # the headline: a small chat VLM, the cache's case
    out["vlm_cache_speedup_deepseek_vl"] = out["deepseek-vl"]["speedup"]
    for name in CASES:
        log(f"[vlm] {out[name]['speedup']:.2f}x at {describe(out[name]['size'])}")
    return out


if __name__ == "__main__":
    import json
    import sys

    torch.set_num_threads(2)
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
