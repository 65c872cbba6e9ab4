"""LoRA fine-tuning of chat vision-language models for dish titles (task2/vlm_lora.py), and the adapter
loaded back for captioning.

One training example is one chat: the user turn holds the image and the question, the assistant turn
the title. Any image-text-to-text model of transformers with a chat template trains this way
(DeepSeek-VL 1.3B and the 7B hybrid, Qwen2.5-VL, SmolVLM, Llama 3.2 Vision, LLaVA ...).

Labels.  The prompt is tokenized exactly as generation sees it (chat template with the generation
prompt; the processor expands the image placeholder into its image tokens). The answer is the rest of
the full conversation's text (the title, then whatever the template closes the assistant turn with),
tokenized on its own and cut after its first end-of-turn token (the tokenizer's EOS or one of the
generation config's). Labels are -100 on every system, user, image and padding position: the loss
covers the title and its end-of-turn token only (and any whitespace the template puts between the end
of the generation prompt and the title, which generation must write too). Only the title is ever cut
(to --max-length tokens), never the prompt, so image tokens are never lost to a length limit.

Vision cache.  LoRA adapts only the language model's linear layers (LORA_PATTERN); the vision towers
and the projector stay frozen, so what they make of an image never changes. It is computed once per
image (`get_image_features(...).pooler_output`), kept in a memory-mapped file in the cache folder
(keyed by the images, the frozen weights and the processor settings) and handed back to the model as
`mm_encoder_outputs`, in training and in generation. Images may differ in their number of image tokens
(SmolVLM / Idefics3 split a photo into a number of crops that follows its aspect ratio): each image's
block is stored one after another with its span. An architecture whose forward does not take
`mm_encoder_outputs`, or whose features are not one [tokens, width] block per image, runs the tower
every step (so does `--cache-vision no`).

Why not TRL's SFTTrainer: it runs the vision tower on every step, needs `{% generation %}` markers
that the real checkpoints' templates lack, and brings its own loop; the engine's contract (validation
by generation, early stopping on a metric, exact resume, the run folder) is the one every recipe here
shares, so the chat model plugs into the engine as a Recipe instead.

A trained adapter is saved as a folder: adapter/ (peft, safetensors) and vlm_lora.json (the base
model, the question, the lengths); `load_adapter(folder)` rebuilds the model from them.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .config import UserError
from .distributed import global_mean
from .data import ImageError, load_image, log, split_records
from .captioner import Caption, Captioner, default_device, write_manifest
from .loading import load_errors
from .vlm import clean_title, conversation, load_chat_vlm

SETTINGS_FILE = "vlm_lora.json"
# LoRA on the language model's attention and MLP projections only: vision towers (SigLIP and CLIP also
# have q_proj ...) and projectors never match. Idefics3 / SmolVLM call their language model text_model.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_PATTERN = r".*(?:language_model|text_model)\..*\.(?:" + "|".join(LORA_TARGETS) + ")"
# Adapter presets (pick one with --lora): rank, alpha, dropout
LORA = {"r16": dict(r=16, lora_alpha=32, lora_dropout=0.05), "r8": dict(r=8, lora_alpha=16, lora_dropout=0.05),
        "r64": dict(r=64, lora_alpha=128, lora_dropout=0.05)}
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "assistant_masks")


def add_lora(model, preset: str = "r16"):
    """The model wrapped with a LoRA adapter on its language model's linear layers; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    if preset not in LORA:
        raise UserError(f"unknown LoRA preset {preset!r}; choose one of {', '.join(LORA)}.")
    if not any(re.fullmatch(LORA_PATTERN, n) for n, _ in model.named_modules()):
        raise UserError(f"{type(model).__name__} has no language-model layer LoRA adapts "
                        f"({', '.join(LORA_TARGETS)} under language_model or text_model).")
    return get_peft_model(model, LoraConfig(target_modules=LORA_PATTERN, **LORA[preset]))


# ------------------------------------------------------------------------------------- tokens
def end_of_turn_ids(model, tokenizer) -> set[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {i for i in ids if i is not None}


def answer_ids(processor, question: str, title: str, ends: set[int], max_length: int = 32) -> list[int]:
    """Token ids of the assistant turn as the chat template writes it after the generation prompt: the title
    (cut to max_length - 1 tokens) and the template's end-of-turn token; nothing after that token."""
    tok = processor.tokenizer
    title = tok.decode(tok(title, add_special_tokens=False)["input_ids"][: max_length - 1])
    user = conversation(None, question)
    user[0]["content"][0].pop("image")
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(user + [{"role": "assistant", "content": [{"type": "text", "text": title}]}],
                                         tokenize=False)
    if not full.startswith(prompt):
        raise UserError("this model's chat template does not write the assistant turn after its generation "
                        "prompt, so the title's tokens cannot be found; it cannot be fine-tuned here.")
    ids = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
    cut = next((i for i, t in enumerate(ids) if t in ends), None)
    return ids[: cut + 1] if cut is not None else ids


def training_batch(prompts: list[list[int]], answers: list[list[int]], pad_id: int):
    """Right-padded prompt + answer rows: (input_ids, attention_mask, labels with -100 off the answers)."""
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        mask[i, : len(p) + len(a)] = 1
        labels[i, len(p): len(p) + len(a)] = torch.tensor(a)
    return ids, mask, labels


def left_pad(rows: list[list[int]], pad_id: int):
    """Prompt rows left-padded for batched generation: (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


# -------------------------------------------------------------------------------- vision cache
def base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def image_features_fn(model):
    """The model's `get_image_features` (on the top model or on its inner `.model`)."""
    m = base_model(model)
    return getattr(m, "get_image_features", None) or m.model.get_image_features


def image_keys(model, inputs) -> list[str]:
    """The processor outputs that `get_image_features` reads (pixel_values, high_res_pixel_values, ...)."""
    params = inspect.signature(image_features_fn(model)).parameters
    return [k for k in inputs if k in params and k not in TEXT_KEYS]


def can_cache_vision(model) -> bool:
    return "mm_encoder_outputs" in inspect.signature(base_model(model).forward).parameters


def frozen_fingerprint(model) -> str:
    """A hash of every weight outside the language model (vision towers, projector): features cached under
    this key are valid exactly as long as those weights are unchanged."""
    h = hashlib.blake2b(type(base_model(model)).__name__.encode(), digest_size=16)
    with torch.no_grad():
        for name, t in base_model(model).state_dict().items():
            if re.search(r"(?:^|\.)(?:language_model|text_model|lm_head)\.", name) or name.startswith("lm_head"):
                continue
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def per_image(pooled) -> list[torch.Tensor] | None:
    """pooler_output as one [tokens, width] tensor per image, or None when it is not shaped so."""
    if isinstance(pooled, torch.Tensor) and pooled.dim() == 3:
        return list(pooled)
    if isinstance(pooled, (list, tuple)) and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in pooled):
        return list(pooled)
    return None


@torch.no_grad()
def _encode(model, processor, images, question: str):
    """(prompt ids per image, the vision side's pooler_output as the model returns it, or None)."""
    inputs = processor.apply_chat_template([conversation(im, question) for im in images], add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt",
                                           processor_kwargs={"padding": True})
    prompts = [row[m.bool()].tolist() for row, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    if not can_cache_vision(model):
        return prompts, None
    m = base_model(model)
    device, dtype = m.device, m.dtype
    kwargs = {k: inputs[k].to(device, dtype=dtype if inputs[k].is_floating_point() else None)
              for k in image_keys(model, inputs)}
    return prompts, image_features_fn(model)(**kwargs).pooler_output


def encode_images(model, processor, images, question: str):
    """(prompt ids per image, image features per image or None) for a batch of PIL images."""
    prompts, pooled = _encode(model, processor, images, question)
    return prompts, None if pooled is None else per_image(pooled)


def pooled_as_list(model, processor, question: str) -> bool:
    """Whether the model hands its image features around as a list per image (LLaVA) rather than one
    [images, tokens, width] tensor (DeepSeek-VL): cached features go back to it the same way."""
    from PIL import Image

    _, pooled = _encode(model, processor, [Image.new("RGB", (64, 64))], question)
    return isinstance(pooled, (list, tuple))


class ChatDataset:
    """Items of one split for the chat model: the prompt's ids and the image's cached features (or the
    image itself when they cannot be cached), + caption, references and name. `features` holds every
    image's [tokens, width] block one after another; item i's is rows spans[i] = (start, tokens)."""

    def __init__(self, records, prompts, features=None, spans=None):
        self.records, self.prompts, self.features, self.spans = records, prompts, features, spans

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        item = {"prompt": self.prompts[i], "caption": r.title, "references": r.references,
                "image_name": r.image_name, "index": i}
        if self.features is not None:
            start, tokens = self.spans[i]
            item["features"] = torch.from_numpy(np.array(self.features[start: start + tokens]))
        else:
            item["image"] = load_image(r.path)
        return item


def chat_collate(items: list[dict]) -> dict:
    """A batch: every field as a list (features too, one [tokens, width] block per image: images may differ
    in their number of tokens; ChatLoRA.vision_inputs stacks them for a model that wants one tensor)."""
    return {k: [it[k] for it in items] for k in items[0]}


def chat_datasets(cfg, model, processor, question: str, splits=("train", "valid", "test"),
                  cache: bool = True) -> dict:
    """One ChatDataset per split. With `cache` (and an architecture that allows it) the frozen vision
    side runs once per image, ever: its outputs live in cfg.cache_dir keyed by the images (path, size,
    mtime), the frozen weights and the processor. Unreadable images are skipped, counted and named."""
    from .cache import _fingerprint, cache_root

    cache = cache and can_cache_vision(model)
    frozen = frozen_fingerprint(model) if cache else ""
    pkey = json.dumps(getattr(processor, "to_dict", lambda: {})(), sort_keys=True, default=str)
    out = {}
    for split in splits:
        records, _ = split_records(cfg, split)
        if cfg.limit:
            records = records[: cfg.limit]
        key = _fingerprint([r.path for r in records], "chat-vision-2", frozen, pkey, question) if records else ""
        root = cache_root(cfg.cache_dir or None)
        data, meta = root / f"chat-{key}.f16", root / f"chat-{key}.json"
        if cache and records and data.exists() and meta.exists():
            info = json.loads(meta.read_text())
            kept = [records[i] for i in info["kept"]]
            arr = np.memmap(data, dtype=np.float16, mode="r", shape=(info["tokens"], info["width"]))
            out[split] = ChatDataset(kept, info["prompts"], arr, info["spans"])
            _skipped(split, info["failed"])
            continue
        kept, prompts, failed, batch, spans = [], [], [], [], []
        arr, sink, width, tmp = None, None, 0, data.with_name(data.name + f".tmp{os.getpid()}")

        def flush():
            nonlocal sink, width
            if batch:
                p, f = encode_images(model, processor, [im for _, im in batch], question)
                if cache and f is not None:  # written as they come: a 7B's features do not fit in memory
                    sink = sink or open(tmp, "wb")
                    for x in f:
                        start = spans[-1][0] + spans[-1][1] if spans else 0
                        spans.append((start, x.shape[0]))
                        width = x.shape[1]
                        sink.write(x.float().cpu().numpy().astype(np.float16).tobytes())
                kept.extend(i for i, _ in batch)
                prompts.extend(p)
                batch.clear()

        from tqdm.auto import tqdm

        for i, r in enumerate(tqdm(records, desc=f"encoding {split}", unit="img", leave=False, mininterval=1)):
            try:
                batch.append((i, load_image(r.path)))
            except ImageError as e:
                failed.append((r.image_name, str(e)))
            if len(batch) == cfg.batch_size or (not cache and len(batch) == 64):
                flush()
        flush()
        _skipped(split, failed)
        if sink is not None:
            sink.close()
            os.replace(tmp, data)
            tokens = spans[-1][0] + spans[-1][1]
            tmp = meta.with_name(meta.name + f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"kept": kept, "prompts": prompts, "failed": failed, "spans": spans,
                                       "tokens": tokens, "width": width}))
            os.replace(tmp, meta)  # the commit point: features without their meta are never read
            arr = np.memmap(data, dtype=np.float16, mode="r", shape=(tokens, width))
        out[split] = ChatDataset([records[i] for i in kept], prompts, arr, spans if arr is not None else None)
    return out


def _skipped(split, failed) -> None:
    if failed:
        names = ", ".join(f"{n} ({why})" for n, why in failed[:5]) + (", ..." if len(failed) > 5 else "")
        log(f"{split}: skipped {len(failed)} unreadable image(s): {names}")


# ----------------------------------------------------------------------------------- the model
def free_tokens(model) -> None:
    """Let generation write every token the adapter learned: the tiny stand-in suppresses single-byte tokens
    for its zero-shot answers (the space before some titles is one); real checkpoints suppress none."""
    base_model(model).generation_config.suppress_tokens = None


class ChatLoRA:
    """Loss and batched captions of a chat VLM (with its LoRA adapter) on ChatDataset batches."""

    def __init__(self, model, processor, question: str, max_length: int = 32, max_new_tokens: int = 24):
        self.model, self.processor, self.question = model, processor, question
        self.max_length, self.max_new_tokens = max_length, max_new_tokens
        tok = processor.tokenizer
        self.ends = end_of_turn_ids(base_model(model), tok)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self._answers: dict[str, list[int]] = {}
        self.stats = Counter()
        self.as_list = None  # how the model passes image features around (pooled_as_list), found on first use
        free_tokens(model)


    def answer(self, title: str) -> list[int]:
        if title not in self._answers:
            self._answers[title] = answer_ids(self.processor, self.question, title, self.ends, self.max_length)
        return self._answers[title]

    def vision_inputs(self, model, batch) -> dict:
        if "features" in batch:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            m = base_model(model)
            feats = [f.to(m.device, dtype=m.dtype) for f in batch["features"]]  # one block per image
            if self.as_list is None:
                self.as_list = pooled_as_list(model, self.processor, self.question)
            pooled = feats if self.as_list else torch.stack(feats)
            return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=pooled)}}
        inputs = self.processor.apply_chat_template(
            [conversation(im, self.question) for im in batch["image"]], add_generation_prompt=True, tokenize=True,
            return_dict=True, return_tensors="pt", processor_kwargs={"padding": True})
        m = base_model(model)
        return {k: inputs[k].to(m.device, dtype=m.dtype if inputs[k].is_floating_point() else None)
                for k in image_keys(model, inputs)}

    def loss(self, model, batch, state=None):
        """Mean cross-entropy of the titles and their end-of-turn tokens. Logits are computed only where an
        answer token is predicted (`logits_to_keep`): over the ~600 image and prompt positions the vocabulary
        projection (100k words for DeepSeek-VL) would cost memory and time for no loss."""
        ids, mask, labels = training_batch(batch["prompt"], [self.answer(c) for c in batch["caption"]], self.pad_id)
        device = base_model(model).device
        keep = ids.shape[1] - min(len(p) for p in batch["prompt"])  # every answer lies in the last `keep` positions
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep + 1,
                       **self.vision_inputs(model, batch)).logits[:, :-1]
        target = labels[:, -keep:].to(device)
        mean = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100)
        tokens = int((target != -100).sum())
        return global_mean(mean * tokens, tokens)  # over every process's answer tokens

    @torch.no_grad()
    def caption(self, model, batch, preset: str = "greedy") -> list[str]:
        from .generation import generation_kwargs

        ids, mask = left_pad(batch["prompt"], self.pad_id)
        device = base_model(model).device
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), pad_token_id=self.pad_id,
                             eos_token_id=sorted(self.ends), **self.vision_inputs(model, batch),
                             **generation_kwargs(preset, self.max_new_tokens))
        new = out[:, ids.shape[1]:]
        self.stats["captions"] += len(new)
        self.stats["ended"] += int(sum(any(t in self.ends for t in row.tolist()) for row in new))
        return [clean_title(t) for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def settings(self, base: str) -> dict:
        return {"base": base, "question": self.question, "max_length": self.max_length,
                "max_new_tokens": self.max_new_tokens}

    def save(self, model, folder, base: str, preset: str = "greedy") -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder / "adapter")
        (folder / SETTINGS_FILE).write_text(json.dumps(self.settings(base), indent=2))
        write_manifest(folder, ChatLoRACaptioner.family, preset=preset, max_new_tokens=self.max_new_tokens)


def adapter_folder(path) -> Path:
    """A run folder -> its best/; a folder holding vlm_lora.json as it is; else one sentence."""
    p = Path(path)
    if (p / "best" / SETTINGS_FILE).exists():
        p = p / "best"
    if not (p / SETTINGS_FILE).exists():
        raise UserError(f"{path} holds no chat-VLM LoRA adapter (no {SETTINGS_FILE}); pass a run folder "
                        "written by task2/vlm_lora.py or its best/ folder.")
    return p


def load_adapter(path, token: str | None = None, dtype: str = "auto", base: str | None = None):
    """(model with the trained adapter, processor, settings) from a run folder or its best/; `base`
    overrides the recorded base model (when the run moved machines)."""
    from peft import PeftModel

    folder = adapter_folder(path)
    try:
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        name = base or settings["base"]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{folder / SETTINGS_FILE} is damaged ({type(e).__name__}).") from None
    model, processor = load_chat_vlm(name, token, dtype)
    try:
        model = PeftModel.from_pretrained(model, folder / "adapter").eval()
        free_tokens(model)
    except (*load_errors(), RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"the adapter in {folder} is damaged or was trained on another base model "
                        f"({first[:160]}).") from None
    return model, processor, settings


class ChatLoRACaptioner(Captioner):
    """The captioner interface over a chat VLM with a trained adapter (a task2/vlm_lora.py run or its best/).
    Photos go the way the run was scored: the frozen vision side's features, stored as float16 like the
    vision cache, then one batched generate from the run's question."""

    family = "chat-vlm-lora"
    default_preset = "greedy"

    def __init__(self, model, processor, settings: dict, source, manifest: dict | None = None):
        super().__init__(source, {**settings, **(manifest or {})})
        self.chat = ChatLoRA(model, processor, settings["question"], int(settings.get("max_length", 32)),
                             self.max_new_tokens)

    @classmethod
    def load(cls, source, token=None, device=None, settings=None):
        model, processor, saved = load_adapter(source, token)
        if getattr(model, "hf_device_map", None) is None:
            model = model.to(default_device(device))
        return cls(model, processor, saved, source, settings)

    def parameters(self) -> int:
        return sum(p.numel() for p in self.chat.model.parameters())

    def describe(self) -> dict:
        return {**super().describe(), "model": type(base_model(self.chat.model)).__name__,
                "base": self.settings.get("base"), "question": self.chat.question}

    @torch.no_grad()
    def caption(self, images, preset=None, top_k=0, max_new_tokens=None) -> list[Caption]:
        preset, max_new = self._decoding(preset, max_new_tokens)
        images = list(images)
        if not images:
            return []
        self.chat.max_new_tokens = max_new
        prompts, feats = encode_images(self.chat.model, self.chat.processor, images, self.chat.question)
        batch = {"prompt": prompts}
        if feats is not None:
            batch["features"] = [f.to(torch.float16).float() for f in feats]  # as the cache stores them
        else:
            batch["image"] = images
        return [Caption(t) for t in self.chat.caption(self.chat.model, batch, preset)]
