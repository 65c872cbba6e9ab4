"""Offline demo data and tiny model builders.

    python -m captioning.synthetic --out DIR [--n 2500] [--seed 0] [--models]

writes a deterministic food-captioning dataset in the standard layout (DIR/{train,valid,test}_data.csv,
DIR/images/): drawn dishes whose caption is fixed by the picture, e.g. "Three Tomatoes on a Blue
Plate" or "A White Bowl of Two Olives" (8 foods, 6 container colours, plates and bowls, counts 1-4,
random positions, sizes, backgrounds and noise, 64 px). A handful of deliberately dirty entries
(listed in DIR/dirty_entries.json with the reason a cleaner should give) exercise the cleaning stage.
`--models` also writes tiny random models and a BPE tokenizer trained on the captions into
DIR/models/, saved with save_pretrained so scripts load them by path exactly like hub ids.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .config import run_main
from .data import SPLITS, course_split

SIZE = 64
COUNTS = ["One", "Two", "Three", "Four"]
# name, plural, colour, shape, radius (px at 64 px)
FOODS = [
    ("Tomato", "Tomatoes", (215, 30, 25), "round", 6.0),
    ("Lemon", "Lemons", (250, 220, 40), "oval", 6.0),
    ("Olive", "Olives", (70, 90, 30), "small-oval", 4.2),
    ("Egg", "Eggs", (250, 250, 240), "fried", 6.0),
    ("Blueberry", "Blueberries", (40, 50, 150), "round", 4.0),
    ("Carrot", "Carrots", (245, 130, 20), "long", 7.0),
    ("Cookie", "Cookies", (160, 100, 50), "dotted", 6.0),
    ("Lime", "Limes", (120, 200, 60), "round", 5.2),
]
CONTAINER_COLOURS = {
    "White": (245, 245, 245), "Blue": (40, 90, 200), "Black": (25, 25, 25),
    "Red": (190, 40, 40), "Green": (40, 150, 70), "Yellow": (235, 200, 40),
}
TABLES = [(150, 110, 70), (120, 85, 55), (200, 190, 170), (110, 110, 115), (225, 215, 195), (90, 70, 60)]


def caption_for(food: int, count: int, container: str, colour: str) -> str:
    name, plural = FOODS[food][:2]
    what = f"{COUNTS[count - 1]} {name if count == 1 else plural}"
    return f"{what} on a {colour} Plate" if container == "plate" else f"A {colour} Bowl of {what}"


def _draw_food(d: ImageDraw.ImageDraw, food: int, x: float, y: float, s: float, rng) -> None:
    _, _, rgb, shape, r = FOODS[food]
    r *= s
    jitter = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in rgb)
    if shape == "round":
        d.ellipse([x - r, y - r, x + r, y + r], fill=jitter, outline=(30, 30, 30))
        if food == 0:  # tomato stalk
            d.rectangle([x - 1 * s, y - r - 1.5 * s, x + 1 * s, y - r + 1 * s], fill=(40, 140, 40))
    elif shape == "oval":
        d.ellipse([x - r * 1.35, y - r * 0.8, x + r * 1.35, y + r * 0.8], fill=jitter, outline=(120, 100, 0))
    elif shape == "small-oval":
        d.ellipse([x - r * 1.4, y - r, x + r * 1.4, y + r], fill=jitter, outline=(20, 30, 10))
    elif shape == "fried":
        d.ellipse([x - r * 1.2, y - r, x + r * 1.2, y + r], fill=jitter, outline=(200, 200, 190))
        d.ellipse([x - r * 0.45, y - r * 0.45, x + r * 0.45, y + r * 0.45], fill=(250, 180, 20))
    elif shape == "long":
        d.polygon([(x - r * 1.4, y - r * 0.45), (x - r * 1.4, y + r * 0.45), (x + r * 1.4, y)], fill=jitter)
        d.line([(x - r * 1.4, y - r * 0.45), (x - r * 1.9, y - r * 0.8)], fill=(40, 150, 40), width=2)
    elif shape == "dotted":
        d.ellipse([x - r, y - r, x + r, y + r], fill=jitter, outline=(90, 50, 20))
        for dx, dy in ((-0.4, -0.3), (0.35, -0.2), (0.0, 0.4)):
            d.ellipse([x + dx * r - 1, y + dy * r - 1, x + dx * r + 1, y + dy * r + 1], fill=(60, 30, 10))


def draw_dish(rng: np.random.Generator, size: int = SIZE):
    """One random dish: (PIL image, caption)."""
    food = int(rng.integers(len(FOODS)))
    count = int(rng.integers(1, 5))
    container = "plate" if rng.random() < 0.5 else "bowl"
    colour = list(CONTAINER_COLOURS)[int(rng.integers(len(CONTAINER_COLOURS)))]
    k = 4  # draw at 4x, then downsample (anti-aliasing)
    S = size * k
    table = np.array(TABLES[int(rng.integers(len(TABLES)))]) + rng.integers(-25, 26, 3)
    img = Image.new("RGB", (S, S), tuple(int(c) for c in np.clip(table, 0, 255)))
    d = ImageDraw.Draw(img)
    crgb = CONTAINER_COLOURS[colour]
    scale = float(rng.uniform(0.85, 1.05))
    cx = S / 2 + rng.uniform(-3, 3) * k
    cy = S / 2 + rng.uniform(-3, 3) * k
    if container == "plate":  # flat, wide ellipse with a rim
        w, h = 29 * k * scale, 23 * k * scale
        d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=crgb, outline=(60, 60, 60), width=k)
        shade = tuple(int(c * 0.85) for c in crgb)
        d.ellipse([cx - w * 0.72, cy - h * 0.72, cx + w * 0.72, cy + h * 0.72], outline=shade, width=k)
        area_w, area_h, top = w * 0.62, h * 0.6, cy
    else:  # bowl seen from the side: a deep half-disc body under an elliptical opening
        w, h = 27 * k * scale, 11 * k * scale
        body = tuple(int(c * 0.8) for c in crgb)
        d.pieslice([cx - w, cy - h - w * 0.9, cx + w, cy - h + w * 0.9], 0, 180, fill=body,
                   outline=(40, 40, 40), width=k)
        d.ellipse([cx - w, cy - 2 * h, cx + w, cy], fill=crgb, outline=(40, 40, 40), width=k)
        inner = tuple(int(c * 0.6) for c in crgb)
        d.ellipse([cx - w * 0.85, cy - 1.8 * h, cx + w * 0.85, cy - 0.2 * h], fill=inner)
        area_w, area_h, top = w * 0.68, h * 0.55, cy - h
    gap = 12.5 * k * scale
    for _restart in range(50):  # rejection sampling: every item fully visible, none overlapping
        placed = []
        for _ in range(count):
            for _attempt in range(40):
                x = cx + rng.uniform(-area_w, area_w)
                y = top + rng.uniform(-area_h, area_h)
                if all(math.hypot(x - px, y - py) > gap for px, py in placed):
                    placed.append((x, y))
                    break
        if len(placed) == count:
            break
    for x, y in placed:
        _draw_food(d, food, x, y, k * scale, rng)
    img = img.resize((size, size), Image.BILINEAR)
    noise = rng.normal(0, 6, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr), caption_for(food, count, container, colour)


def _text_overlay(rng) -> Image.Image:
    """A food picture with big printed words across it (what OCR cleaning must catch)."""
    base, _ = draw_dish(rng)
    img = base.resize((384, 384), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=44)
    for i, line in enumerate(["BEST HOME", "RECIPES", "COOKBOOK"]):
        d.rectangle([20, 50 + i * 100, 364, 120 + i * 100], fill=(255, 255, 255))
        d.text((30, 55 + i * 100), line, fill=(0, 0, 0), font=font)
    return img


def make_dataset(out, n: int = 2500, seed: int = 0, dirty: bool = True) -> dict:
    """Write the dataset into `out`; returns {"splits": sizes, "dirty": [...]}."""
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img, cap = draw_dish(rng)
        name = f"dish-{seed}-{i:05d}"
        img.save(images / f"{name}.jpg", quality=92)
        rows.append({"Title": cap, "Image_Name": name})
    df = pd.DataFrame(rows)
    parts = {s: df.iloc[np.sort(idx)].copy() for s, idx in zip(SPLITS, course_split(n, seed))}
    dirty_list = _add_dirty(parts, images, rng) if dirty else []
    for s, part in parts.items():
        part.to_csv(out / f"{s}_data.csv", index=False)
    (out / "dirty_entries.json").write_text(json.dumps(dirty_list, indent=1))
    return {"splits": {s: len(p) for s, p in parts.items()}, "dirty": dirty_list}


def _add_dirty(parts, images: Path, rng) -> list[dict]:
    dirty = []

    def add(split, name, title, reason, img=None, raw=None):
        if img is not None:
            img.save(images / f"{name}.jpg", quality=90)
        if raw is not None:
            (images / f"{name}.jpg").write_bytes(raw)
        parts[split] = pd.concat([parts[split], pd.DataFrame([{"Title": title, "Image_Name": name}])],
                                 ignore_index=True)
        dirty.append({"split": split, "Image_Name": name, "Title": title, "reason": reason})

    add("train", "zz-cookbook-cover", "Best Home Recipes", "text", img=_text_overlay(rng))
    add("train", "zz-missing-photo", "Two Limes on a White Plate", "missing")
    add("train", "zz-name-error", "#NAME?", "bad title", img=draw_dish(rng)[0])
    add("train", "zz-untitled", "", "bad title", img=draw_dish(rng)[0])
    buf = io.BytesIO()
    draw_dish(rng)[0].save(buf, "JPEG", quality=90)
    add("train", "zz-truncated", "One Egg on a Red Plate", "corrupt", raw=buf.getvalue()[: len(buf.getvalue()) // 3])
    add("valid", "zz-blank", "A Grey Bowl of Nothing", "blank", img=Image.new("RGB", (SIZE, SIZE), (128, 128, 128)))
    # the same photo twice (re-encoded) under two names with different titles, inside train ...
    img, cap = draw_dish(rng)
    add("train", "zz-dup-a", cap, "duplicate", img=img)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    add("train", "zz-dup-b", "Leftovers on a Plate", "duplicate", raw=buf.getvalue())
    # ... and once across train and test (leakage)
    img, cap = draw_dish(rng)
    add("train", "zz-leak-train", cap, "duplicate", img=img)
    add("test", "zz-leak-test", "Snack on a Plate", "duplicate", img=img.resize((60, 60)).resize((SIZE, SIZE)))
    return dirty


# ------------------------------------------------------------------------------------- tiny models
SPECIAL = "<|endoftext|>"


def train_tokenizer(captions, out_dir=None, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on `captions` (GPT-2 style: one id for bos=eos=pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # show_progress=False: off a terminal its progress bar prints only empty lines
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(captions, trainer)
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL,
                             unk_token=SPECIAL, pad_token=SPECIAL)
    if out_dir:
        fast.save_pretrained(out_dir)
    return fast


def build_tiny_vit_gpt2(out_dir, tokenizer, image_size: int = SIZE, patch: int = 8, width: int = 64,
                        enc_layers: int = 2, dec_layers: int = 2, heads: int = 2, mlp: int = 256,
                        vocab: int = 0, positions: int = 64):
    """A random VisionEncoderDecoder (default: ViT 64 px / patch 8 + GPT-2 64-dim, 2 layers each), saved
    like nlpconnect's checkpoint (model + tokenizer + image processor in one folder). The sizes let the
    benchmarks build realistic widths the same way."""
    import torch
    from transformers import (GPT2Config, ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel)

    torch.manual_seed(0)
    tid = tokenizer.eos_token_id
    enc = ViTConfig(image_size=image_size, patch_size=patch, hidden_size=width, num_hidden_layers=enc_layers,
                    num_attention_heads=heads, intermediate_size=mlp)
    dec = GPT2Config(vocab_size=max(vocab, len(tokenizer)), n_positions=positions, n_embd=width,
                     n_layer=dec_layers, n_head=heads, add_cross_attention=True, is_decoder=True,
                     bos_token_id=tid, eos_token_id=tid)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = cfg.pad_token_id = cfg.eos_token_id = cfg.bos_token_id = tid
    model = VisionEncoderDecoderModel(config=cfg)
    for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, tid)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3, resample=2).save_pretrained(out_dir)
    return model


# Builders run by `--models`: name -> fn(out_dir, tokenizer). Later stages register theirs here.
MODEL_BUILDERS = {"vit-gpt2": build_tiny_vit_gpt2}


def llama_style_tokenizer(texts, vocab_size: int = 400):
    """A byte-level BPE trained on `texts`, with Llama 3's special tokens: a BOS added in front of
    every encoded text, a separate EOS, and no pad token (as meta-llama/Llama-3.2-1B ships)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    backend = train_tokenizer(texts, vocab_size=vocab_size).backend_tokenizer
    backend.add_special_tokens([bos, eos])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)


def build_tiny_llama(out_dir, tokenizer=None, pretrain_steps: int = 60, width: int = 64, mlp: int = 192,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = 0):
    """A tiny LlamaForCausalLM (64-dim, 2 layers, grouped-query attention, tied embeddings like Llama 3.2)
    with its own Llama-style tokenizer trained on every synthetic caption and the task2 prompt. The
    sizes (and `vocab`, a vocabulary padded past the tokenizer's) let the benchmarks build realistic
    widths the same way.

    Like the real Llama, it has read text before it sees an image: `pretrain_steps` steps of plain
    language modelling on the texts (~1 s) teach it the words and grammar of captions, never an
    image. A random language model under a frozen-base LoRA adapter would have to learn the language
    through the adapter too, which a real LoRA run never does. (`tokenizer`, the shared GPT-2-style
    one, is not used: a Llama has its own.)"""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = all_captions()
    texts.append("The name of the dish in the image is:")
    tok = llama_style_tokenizer(texts)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=max(vocab, len(tok)), hidden_size=width, intermediate_size=mlp,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    # At 64 dims the default init (std 0.02) caps every logit near +-1 through the tied head;
    # a trained Llama's logits span tens. (Scaled down for the benchmarks' wider models.)
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=0.2 * (64 / width) ** 0.5)
    seqs = [tok(" " + t)["input_ids"] + [tok.eos_token_id] for t in texts]  # BOS text EOS
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [tok.eos_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only contend for a second core (10x slower on a busy CPU)
    try:
        for _ in range(pretrain_steps):
            i = torch.randint(len(seqs), (64,))
            labels = ids[i].masked_fill(mask[i] == 0, -100)
            model(input_ids=ids[i], attention_mask=mask[i], labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return model


def build_tiny_vit(out_dir, tokenizer=None, image_size: int = SIZE, patch: int = 8, width: int = 64,
                   layers: int = 2, heads: int = 2, mlp: int = 256):
    """A tiny random ViTModel (64 px, patch 8, 64-dim, 2 layers) + ViTImageProcessor: the stand-in for
    google/vit-base-patch16-224-in21k as a frozen task2 image encoder (the sizes are for benchmarks)."""
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(1)
    cfg = ViTConfig(image_size=image_size, patch_size=patch, hidden_size=width, num_hidden_layers=layers,
                    num_attention_heads=heads, intermediate_size=mlp)
    model = ViTModel(cfg)  # with its pooler, as the hub checkpoint has one
    model.save_pretrained(out_dir)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(out_dir)
    return model


MODEL_BUILDERS["llama"] = build_tiny_llama
MODEL_BUILDERS["vit"] = build_tiny_vit


# A DeepSeek-style chat format, "User: <image placeholders>question\n\nAssistant: title<eos>\n\n" (real models
# ship theirs). The assistant turn ends with EOS, as DeepSeek-VL's does, and is wrapped in {% generation %}
# markers, so processors can return its assistant-token mask (what the LoRA tests check labels against).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ m['content'] if m['content'] is string else m['content'][0]['text'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for b in m['content'] %}"
    "{% if b['type'] == 'image' %}<image_placeholder>{% elif b['type'] == 'text' %}{{ b['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n\n"
    "{% else %}Assistant: {% generation %}{{ m['content'] if m['content'] is string else m['content'][0]['text'] }}"
    "{{ eos_token }}{% endgeneration %}\n\n{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def chat_tokenizer(tokenizer):
    """A copy of `tokenizer` for the tiny chat models: the image placeholder token, the chat template, left
    padding (batched generation)."""
    from tokenizers import Tokenizer
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),
                             bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                             unk_token=tokenizer.unk_token, pad_token=tokenizer.pad_token, padding_side="left",
                             extra_special_tokens={"image_token": "<image_placeholder>"},
                             chat_template=TINY_CHAT_TEMPLATE)


def build_tiny_deepseek_vl(out_dir, tokenizer, image_size: int = 32, high_res_size: int = SIZE, init: float = 0.1,
                           head: float = 0.5, vision_width: int = 64, sam_channels: int = 16):
    """A tiny random DeepSeek-VL hybrid chat model (SigLIP 32 px + SAM 64 px + 2-layer Llama) and its
    processor with a chat template: the offline stand-in for deepseek-community/deepseek-vl-7b-chat.
    Its tokenizer is `tokenizer` plus the image placeholder; single-byte tokens are suppressed in
    generation so that its (random) answers are made of caption words, not bytes. Weights are drawn
    with std `init`, the output layer's with std `head`: small enough in the blocks for a LoRA adapter
    to steer them (task2/vlm_lora.py), large enough at the output for confident answers. The frozen vision
    side is 64 wide (SAM 16 channels): at 32 wide (8) its random features kept too little of each photo
    for the LoRA-trained language model (the demo's vlm_lora test BLEU-4 0.41 -> 0.53, 2026-11-30)."""
    import torch
    from transformers import (DeepseekVLHybridConfig, DeepseekVLHybridForConditionalGeneration,
                              DeepseekVLHybridImageProcessorPil, DeepseekVLHybridProcessor, LlamaConfig,
                              SamVisionConfig, SiglipVisionConfig)

    tok = chat_tokenizer(tokenizer)
    ids = {key: getattr(tok, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    torch.manual_seed(0)
    patch = 8
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       initializer_range=init, **ids)
    siglip = SiglipVisionConfig(image_size=image_size, patch_size=patch, hidden_size=vision_width,
                                intermediate_size=2 * vision_width, num_hidden_layers=1, num_attention_heads=2)
    sam = SamVisionConfig(image_size=high_res_size, patch_size=16, hidden_size=32, output_channels=sam_channels,
                          num_hidden_layers=2, num_attention_heads=2, window_size=2, global_attn_indexes=[1],
                          mlp_dim=64)
    cfg = DeepseekVLHybridConfig(text_config=text, vision_config=siglip, high_res_vision_config=sam,
                                 image_token_id=tok.convert_tokens_to_ids(tok.image_token),
                                 tie_word_embeddings=False)
    model = DeepseekVLHybridForConditionalGeneration(cfg)
    with torch.no_grad():  # a wide output layer: answers depend on image and prompt, and can be confident
        model.lm_head.weight.mul_(head / init)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    model.generation_config.suppress_tokens = sorted(
        i for t, i in tok.get_vocab().items() if len(t) == 1 and i != tok.eos_token_id)
    model.save_pretrained(out_dir)
    low, high = {"height": image_size, "width": image_size}, {"height": high_res_size, "width": high_res_size}
    images = DeepseekVLHybridImageProcessorPil(size=low, high_res_size=high)
    DeepseekVLHybridProcessor(images, tok, chat_template=TINY_CHAT_TEMPLATE,
                              num_image_tokens=(image_size // patch) ** 2).save_pretrained(out_dir)
    return model


MODEL_BUILDERS["deepseek-vl"] = build_tiny_deepseek_vl


def build_tiny_llava(out_dir, tokenizer, image_size: int = 32, patch: int = 8):
    """A tiny random LLaVA chat model (CLIP 32 px + 2-layer Llama) with the same chat template: a second
    chat-VLM architecture for the LoRA tests (not built by --models)."""
    import torch
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = chat_tokenizer(tokenizer)
    ids = {key: getattr(tok, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    torch.manual_seed(0)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       initializer_range=0.1, **ids)
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=2)
    cfg = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-1,
                      vision_feature_select_strategy="default",
                      image_token_id=tok.convert_tokens_to_ids(tok.image_token))
    model = LlavaForConditionalGeneration(cfg)
    with torch.no_grad():  # as the DeepSeek-VL stand-in: an output layer wide enough for confident answers
        model.lm_head.weight.mul_(5.0)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(out_dir)
    images = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    LlavaProcessor(images, tok, patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=TINY_CHAT_TEMPLATE).save_pretrained(out_dir)
    return model


# SmolVLM's chat format as HuggingFaceTB/SmolVLM-256M-Instruct ships it, "<|im_start|>User:<image>question
# <end_of_utterance>\nAssistant: title<end_of_utterance>\n", with the assistant turn inside {% generation %}
# markers (for the assistant-token mask the LoRA tests check labels against).
TINY_SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}"
    "{% if m['content'] is string %}: {{ m['content'] }}<end_of_utterance>\n"
    "{% elif m['role'] == 'assistant' %}: {% generation %}{{ m['content'][0]['text'] }}<end_of_utterance>"
    "{% endgeneration %}\n"
    "{% else %}{{ ':' if m['content'][0]['type'] == 'image' else ': ' }}{% for b in m['content'] %}"
    "{% if b['type'] == 'text' %}{{ b['text'] }}{% elif b['type'] == 'image' %}<image>{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
SMOLVLM_TOKENS = ["<|im_start|>", "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>",
                  *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))]


def tiny_smolvlm(tokenizer, image_size: int = 64, patch: int = 8, scale_factor: int = 4, vision: dict | None = None,
                 text: dict | None = None, head: float = 5.0, split: bool = False):
    """(model, processor) of a tiny random SmolVLM chat model (SigLIP-style tower 64 px / patch 8, pixel-shuffle
    connector with scale factor 4 -> 4 image tokens, 2-layer Llama); `vision` and `text` (config fields) let
    the benchmarks build real widths. build_tiny_smolvlm saves them.

    HuggingFaceTB/SmolVLM-256M-Instruct (and the 500M and 2B) are `idefics3` models on the hub: an
    Idefics3ForConditionalGeneration with an Idefics3Processor, which is what this builds. (SmolVLM2's own
    SmolVLMProcessor cannot be constructed on a machine without torchvision and num2words: its video
    processor needs them.) Image splitting is off (do_image_splitting=False), so every image is one square
    crop and one block of image tokens, <fake_token_around_image><global-img><image>...<fake_token_around_image>;
    `split` turns it on as the hub's processor has it: a photo is resized to 4x `image_size` on its long
    side and cut into crops of `image_size` (their number follows its aspect ratio), plus the whole photo.
    The end of a turn is <end_of_utterance>, which only the generation config names as EOS (as the hub's)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import (GPT2TokenizerFast, Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3ImageProcessorPil, Idefics3Processor, Idefics3VisionConfig, LlamaConfig)

    tok = GPT2TokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),
                            bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                            unk_token=tokenizer.unk_token, pad_token=tokenizer.pad_token, padding_side="left",
                            chat_template=TINY_SMOLVLM_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": SMOLVLM_TOKENS})
    ids = {key: getattr(tok, key) for key in ("bos_token_id", "pad_token_id")}
    end = tok.convert_tokens_to_ids("<end_of_utterance>")
    torch.manual_seed(0)
    text = LlamaConfig(**{**dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                 initializer_range=0.1, eos_token_id=end, **ids), **(text or {})})
    vision = Idefics3VisionConfig(**{**dict(image_size=image_size, patch_size=patch, hidden_size=32,
                                            intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                                     **(vision or {})})
    model = Idefics3ForConditionalGeneration(Idefics3Config(
        vision_config=vision, text_config=text, scale_factor=scale_factor,
        image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False))
    with torch.no_grad():  # as the other stand-ins: an output layer wide enough for confident answers
        model.lm_head.weight.mul_(head)
    for key, value in {**ids, "eos_token_id": end}.items():
        setattr(model.generation_config, key, value)
    crop = {"longest_edge": image_size}
    images = Idefics3ImageProcessorPil(do_image_splitting=split, max_image_size=crop,
                                       size={"longest_edge": image_size * (4 if split else 1)})
    processor = Idefics3Processor(images, tok, image_seq_len=(image_size // patch) ** 2 // scale_factor ** 2,
                                  chat_template=TINY_SMOLVLM_TEMPLATE)
    return model, processor


def build_tiny_smolvlm(out_dir, tokenizer, **sizes):
    """The tiny SmolVLM of tiny_smolvlm saved like a hub checkpoint (model + processor in one folder): a third
    chat-VLM architecture for the LoRA tests (not built by --models)."""
    model, processor = tiny_smolvlm(tokenizer, **sizes)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return model


def all_captions() -> list[str]:
    """Every caption the synthetic dishes can have (8 foods x 4 counts x plate/bowl x 6 colours)."""
    import itertools

    return [caption_for(f, c, k, col) for f, c, k, col in itertools.product(
        range(len(FOODS)), range(1, 5), ("plate", "bowl"), CONTAINER_COLOURS)]


def build_tiny_blip(out_dir, tokenizer=None, image_size: int = SIZE, patch: int = 8, width: int = 64,
                    layers: int = 2, heads: int = 2, mlp: int = 256):
    """A tiny random BlipForConditionalGeneration (ViT 64 px / patch 8 + a 2-layer BERT decoder with
    cross-attention, 64-dim) and its processor, saved like Salesforce/blip-image-captioning-base. BLIP
    reads text with a BERT WordPiece tokenizer ([CLS] text [SEP]) and starts captions from [DEC]: one is
    trained here on every synthetic caption (`tokenizer`, the shared GPT-2-style one, is not used)."""
    import torch
    from tokenizers import decoders, processors
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil,
                              BlipProcessor, BlipTextConfig, BlipVisionConfig)

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    wp = word_piece(all_captions(), specials, lowercase=False)
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    wp.decoder = decoders.WordPiece()
    tok = BertTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                            cls_token="[CLS]", mask_token="[MASK]", bos_token="[DEC]", do_lower_case=False)
    ids = dict(bos_token_id=tok.bos_token_id, sep_token_id=sep, eos_token_id=sep, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    text = BlipTextConfig(vocab_size=len(tok), hidden_size=width, encoder_hidden_size=width, intermediate_size=mlp,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=64, **ids)
    vision = BlipVisionConfig(image_size=image_size, patch_size=patch, hidden_size=width, intermediate_size=mlp,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              initializer_range=0.02)  # BLIP's default (1e-10) makes a random tower's output constant
    model = BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()))
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(out_dir)
    images = BlipImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3)
    BlipProcessor(images, tok).save_pretrained(out_dir)
    return model


MODEL_BUILDERS["blip"] = build_tiny_blip


def canonical_ids(data: dict) -> dict:
    """A trained tokenizer's JSON with its vocabulary renumbered: special tokens first (in their order), then
    every other token sorted. The `tokenizers` trainers number the alphabet in hash order, so training twice
    on the same texts gave the same tokens under other ids, and the tiny CLIP trained on them (behind the
    demo's CLIPScore column) came out different at every build. BPE merges name tokens, not ids."""
    vocab, added = data["model"]["vocab"], data.get("added_tokens", [])
    specials = [t["content"] for t in sorted(added, key=lambda t: t["id"])]
    ids = {t: i for i, t in enumerate(specials + sorted(t for t in vocab if t not in specials))}
    data["model"]["vocab"] = ids
    for t in added:
        t["id"] = ids[t["content"]]
    return data


def word_piece(texts, specials: list[str], lowercase: bool):
    """A BERT-style WordPiece tokenizer (tokenizers.Tokenizer) whose vocabulary is every word of `texts`,
    every character and every "##" character, sorted after the specials: the same ids at every build.
    (WordPieceTrainer breaks ties between equally frequent pairs in hash order: two builds merged
    "toma"+"to" or "tomat"+"o", so BERTScore and the BLIP run differed from build to build.) Words the
    texts never had are spelled out in characters, as a trained vocabulary would fall back to."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    norm, pre = normalizers.BertNormalizer(lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
    words = {w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))}
    chars = {c for w in words for c in w}
    vocab = specials + sorted(words | chars) + sorted(f"##{c}" for c in chars)
    wp = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    wp.normalizer, wp.pre_tokenizer = norm, pre
    wp.add_special_tokens(specials)
    return wp


def clip_tokenizer(texts, vocab_size: int = 300):
    """A CLIP tokenizer (lower case, `</w>` word ends, <|startoftext|> ... <|endoftext|>) with a BPE
    trained on `texts`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<|startoftext|>", "<|endoftext|>"]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       end_of_word_suffix="</w>", show_progress=False))
    model = canonical_ids(json.loads(bpe.to_str()))["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, pad_token="<|endoftext|>")


def _own_torch_rng(builder):
    """Run a builder on a forked torch RNG: the models built before and after it (and whatever the
    caller trains next) draw the same numbers as without it."""
    import functools

    @functools.wraps(builder)
    def wrapped(*args, **kwargs):
        import torch

        with torch.random.fork_rng():
            return builder(*args, **kwargs)

    return wrapped


@_own_torch_rng
def build_tiny_clip(out_dir, tokenizer=None, steps: int = 150, n_images: int = 768, image_size: int = 32,
                    seed: int = 7, text: dict | None = None, vision: dict | None = None, projection_dim: int = 32):
    """A tiny CLIPModel (32 px, patch 8, 32-dim towers, 2 layers each) and its processor and tokenizer,
    trained contrastively for `steps` steps (batch 96; ~3 s) on freshly drawn dishes (never the
    dataset's pictures): the offline stand-in for openai/clip-vit-base-patch32 behind CLIPScore.
    Trained, it prefers a picture's own title to another's; untrained, its scores would mean nothing.
    `text`, `vision` (config fields) and `projection_dim` let the benchmarks build real sizes."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tok = clip_tokenizer(all_captions())
    torch.manual_seed(seed)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    text = {**dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=2, max_position_embeddings=32, eos_token_id=eos, pad_token_id=eos,
                   bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>")), **(text or {})}
    vision = {**dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2), **(vision or {})}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
    processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                      crop_size={"height": image_size, "width": image_size})
    rng = np.random.default_rng(seed)
    dishes = [draw_dish(rng) for _ in range(n_images if steps else 0)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only contend for a second core
    try:
        if steps:
            pixels = processor([im for im, _ in dishes], return_tensors="pt")["pixel_values"]
            enc = tok(["A photo depicts " + c for _, c in dishes], padding=True, return_tensors="pt")
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
            model.train()
        for _ in range(steps):
            i = torch.randint(n_images, (96,))
            out = model(input_ids=enc["input_ids"][i], attention_mask=enc["attention_mask"][i],
                        pixel_values=pixels[i], return_loss=True)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return model


@_own_torch_rng
def build_tiny_bert(out_dir, tokenizer=None, baseline_pairs: int = 400, seed: int = 0, width: int = 32,
                    layers: int = 2, heads: int = 2, mlp: int = 64):
    """A tiny random BertModel (32-dim, 2 layers) with a WordPiece tokenizer trained on the captions,
    and its BERTScore baseline (`bertscore_baseline.tsv`: mean P, R, F per layer over random pairs of
    unrelated captions, as bert-score's own baselines come from unrelated sentence pairs; none when
    `baseline_pairs` is 0): the offline stand-in for roberta-large behind BERTScore. The sizes let the
    benchmarks build real widths."""
    import torch
    from tokenizers import decoders, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    texts = all_captions()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp = word_piece(texts, specials, lowercase=True)
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    wp.decoder = decoders.WordPiece()
    tok = BertTokenizerFast(tokenizer_object=wp, model_max_length=64, **dict(zip(
        ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), specials)))
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=mlp,
                                 num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=64))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    if not baseline_pairs:
        return model
    import bert_score

    rng = np.random.default_rng(seed)
    a, b = (rng.integers(len(texts), size=baseline_pairs) for _ in range(2))
    keep = a != b
    cands, refs = [texts[i] for i in a[keep]], [texts[i] for i in b[keep]]
    rows = ["LAYER,P,R,F"]
    for layer in range(model.config.num_hidden_layers + 1):
        scorer = bert_score.BERTScorer(model_type=str(out_dir), num_layers=layer, idf=False, device="cpu")
        p, r, f = scorer.score(cands, refs, verbose=False)
        rows.append(f"{layer},{p.mean():.6f},{r.mean():.6f},{f.mean():.6f}")
    (Path(out_dir) / "bertscore_baseline.tsv").write_text("\n".join(rows) + "\n")
    return model


MODEL_BUILDERS["clip"] = build_tiny_clip
MODEL_BUILDERS["bert"] = build_tiny_bert


def build_models(data_dir, out=None, seconds: dict | None = None) -> Path:
    """Train the tokenizer on the dataset's train captions and write every tiny model into out
    (`seconds`, if given, receives each builder's time)."""
    import time

    from .data import read_csv
    from .text import normalize

    data_dir = Path(data_dir)
    out = Path(out) if out else data_dir / "models"
    caps = [normalize(t) for s in SPLITS for t in read_csv(data_dir / f"{s}_data.csv")["Title"]]
    tok = train_tokenizer([c for c in caps if c], out / "tokenizer")
    for name, fn in MODEL_BUILDERS.items():
        t0 = time.perf_counter()
        fn(out / name, tok)
        if seconds is not None:
            seconds[name] = time.perf_counter() - t0
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m captioning.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--n", type=int, default=2500, help="number of clean images (default 2500)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-dirty", action="store_true", help="leave out the deliberately dirty entries")
    p.add_argument("--models", action="store_true", help="also write tiny models and a tokenizer to OUT/models")
    a = p.parse_args(argv)
    if a.n < 10:
        p.error("--n must be at least 10")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info = make_dataset(a.out, a.n, a.seed, dirty=not a.no_dirty)
    print(f"wrote {info['splits']} rows (+{len(info['dirty'])} dirty entries) to {a.out}")
    if a.models:
        print(f"wrote tiny models to {build_models(a.out)}")


if __name__ == "__main__":
    run_main(main)
