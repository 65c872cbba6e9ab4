"""Chat-VLM LoRA epoch: the vision side's outputs cached (task2/vlm_lora.py's default) against running the
vision tower on every step (--cache-vision no), side by side on the same model, data and machine.

The model is a LLaVA-style chat VLM at DeepSeek-VL 1.3B chat's widths: a 384 px / patch 16 vision tower
1024 wide (576 image tokens, as SigLIP-L) and a language model 2048 wide (MLP 5632, vocabulary 32,000),
random weights. Depth is one layer each: the two sides keep the real model's ratio (24 layers each), so
the ratio of epoch times is what the cache buys at full depth too. LoRA r16 on the language model,
batch 4, fp32 on the CPU; the vision features are computed once before the cached epoch and not counted
(they are computed once per image, ever).

    python bench/bench_vlm.py            # ~1 minute on 2 cores
"""
from __future__ import annotations

import time

import torch


def build(quick: bool = False):
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
    size = {"image": image, "patch": patch, "vision_width": vw, "text_width": tw, "mlp": mlp, "vocab": vocab,
            "image_tokens": (image // patch) ** 2, "layers": "1 + 1"}
    return model.eval(), processor, size


def run(quick: bool = False, images: int = 16, batch: int = 4, log=print) -> dict:
    import numpy as np
    from PIL import Image

    from captioning.engine import make_adamw
    from captioning.synthetic import all_captions
    from captioning.vlm_lora import ChatLoRA, add_lora, encode_images

    if quick:
        images, batch = 4, 2
    model, processor, size = build(quick)
    model = add_lora(model, "r16")
    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 255, (size["image"], size["image"], 3), dtype=np.uint8))
            for _ in range(images)]
    titles = all_captions()[:images]
    chat = ChatLoRA(model, processor, "Title:")
    prompts, feats = encode_images(model, processor, pics, "Title:")  # once per image, ever (not timed)

    class Cfg:
        lr, weight_decay = 1e-4, 0.0

    def epoch(cached: bool) -> float:
        opt = make_adamw([p for p in model.parameters() if p.requires_grad], Cfg)
        model.train()
        t0 = time.perf_counter()
        for start in range(0, images, batch):
            b = {"prompt": prompts[start:start + batch], "caption": titles[start:start + batch]}
            if cached:
                b["features"] = torch.stack(feats[start:start + batch])
            else:
                b["image"] = pics[start:start + batch]
            chat.loss(model, b).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    epoch(True)  # warm-up: allocator, kernels
    tower, cached = [], []
    for _ in range(1 if quick else 2):  # alternate, keep the best of each (another user's load hits both)
        tower.append(epoch(False))
        cached.append(epoch(True))
    out = {"size": {**size, "images": images, "batch": batch}, "tower": {"epoch_seconds": min(tower)},
           "cached": {"epoch_seconds": min(cached)}}
    out["vlm_cache_speedup"] = out["tower"]["epoch_seconds"] / out["cached"]["epoch_seconds"]
    log(f"[vlm] tower every step {min(tower):.2f} s, cached {min(cached):.2f} s per epoch: "
        f"{out['vlm_cache_speedup']:.2f}x")
    return out


if __name__ == "__main__":
    import json
    import sys

    torch.set_num_threads(2)
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
