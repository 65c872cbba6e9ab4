"""BLIP captioners (BlipForConditionalGeneration: Salesforce/blip-image-captioning-base and folders saved
like it): loading, fine-tuning with LoRA or in full, batched captions, save and load.

Token ids. BLIP reads text through a BERT WordPiece tokenizer ("[CLS] title [SEP]") but generates from
[DEC] (the text config's bos) and stops at [SEP]. `forward` does not swap the first token, so training
puts [DEC] in place of [CLS], and training and generation agree. Its loss does not skip padding by
itself: labels are -100 on padding (marked by the attention mask).

What trains. With LoRA (the default) an adapter learns on the text decoder's attention ("query",
"value": its self- and cross-attention; the vision tower's layers are named qkv and projection, so it
stays frozen). With --lora none the whole text decoder trains, and --train-vision adds the vision
tower. While the vision tower is frozen its outputs come from the feature cache (computed once per
image) and the decoder trains on them.

A trained model is saved as a folder: with LoRA, adapter/ (peft, safetensors) beside the processor and
blip.json (the base model); in full, save_pretrained's files. `load_blip` reads either.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .captioner import Caption, Captioner, default_device, write_manifest
from .config import UserError
from .distributed import global_mean
from .generation import decode, generation_kwargs
from .imaging import pixel_batch, pixel_normalizer
from .loading import check_local_or_hub, load_error, load_errors

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"
SETTINGS_FILE = "blip.json"
# Adapter presets (pick one with --lora): rank, alpha, dropout on the text decoder's query and value
LORA = {"r16": dict(r=16, lora_alpha=32, lora_dropout=0.05), "r8": dict(r=8, lora_alpha=16, lora_dropout=0.05)}
LORA_TARGETS = ["query", "value"]


def load_blip(name: str = DEFAULT_BLIP, token: str | None = None):
    """(model, processor) from a hub id, a save_pretrained folder, or a folder this module saved (base +
    adapter, merged into the weights for speed)."""
    from transformers import AutoConfig, BlipForConditionalGeneration, BlipProcessor

    folder = Path(name)
    if (folder / "best" / SETTINGS_FILE).exists() or (folder / "best" / "config.json").exists():
        folder = folder / "best"  # a run folder: its best epoch
    settings = json.loads((folder / SETTINGS_FILE).read_text()) if (folder / SETTINGS_FILE).exists() else {}
    base = settings.get("base") or str(folder if folder.exists() else name)
    check_local_or_hub(base)
    try:
        kind = AutoConfig.from_pretrained(base, token=token).model_type
        if kind != "blip":
            raise UserError(f"{base} is a {kind!r} model, not a BLIP captioner such as {DEFAULT_BLIP}.")
        model = BlipForConditionalGeneration.from_pretrained(base, token=token)
        processor = BlipProcessor.from_pretrained(folder if (folder / "preprocessor_config.json").exists() else base,
                                                  token=token)
        if (folder / "adapter").is_dir():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, folder / "adapter").merge_and_unload()
    except load_errors() as e:
        raise load_error(name, e) from None
    return model.eval(), processor


def prepare(model, lora: str = "r16", train_vision: bool = False):
    """The model ready to train: a LoRA adapter on the text decoder (lora "r16"/"r8"), or the text
    decoder in full ("none"), the vision tower too with train_vision."""
    if lora == "none":
        model.requires_grad_(True)
        model.vision_model.requires_grad_(train_vision)
        return model
    if lora not in LORA:
        raise UserError(f"unknown LoRA preset {lora!r}; choose one of none, {', '.join(LORA)}.")
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(target_modules=LORA_TARGETS, **LORA[lora]))


def blip_targets(tokenizer, captions, dec_id: int, max_length: int = 32):
    """[DEC] title [SEP], right-padded: (input_ids, attention_mask, labels with -100 on padding)."""
    enc = tokenizer(list(captions), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    ids, mask = enc["input_ids"].clone(), enc["attention_mask"]
    ids[:, 0] = dec_id  # [CLS] -> [DEC]: generation starts from [DEC]
    return ids, mask, ids.masked_fill(mask == 0, -100)


def unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def generate_titles(model, tokenizer, image_embeds, preset: str = "beam", max_new_tokens: int = 24) -> list[str]:
    """Batched titles from the vision tower's outputs: the text decoder generates from [DEC] to [SEP]."""
    text = unwrap(model).config.text_config
    start = torch.full((len(image_embeds), 1), text.bos_token_id, dtype=torch.long, device=image_embeds.device)
    out = unwrap(model).text_decoder.generate(
        input_ids=start, encoder_hidden_states=image_embeds, eos_token_id=text.sep_token_id,
        pad_token_id=text.pad_token_id, **generation_kwargs(preset, max_new_tokens),
        encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device))
    return decode(tokenizer, out)


def blip_recipe(model, processor, cfg, base: str, cached: bool = False):
    """The engine Recipe: loss and batched captions on cached vision features ("features", when `cached`)
    or pixels; best/ is saved with its manifest (and the adapter beside blip.json under LoRA)."""
    from .engine import Recipe

    norm, tok = pixel_normalizer(processor.image_processor), processor.tokenizer
    dec_id = unwrap(model).config.text_config.bos_token_id

    def image_embeds(m, batch):
        if "features" in batch:
            return batch["features"].float()
        return unwrap(m).vision_model(pixel_values=norm(batch["pixels"])).last_hidden_state

    def loss(m, batch, state=None):
        feats = image_embeds(m, batch)
        ids, mask, labels = (t.to(feats.device) for t in blip_targets(tok, batch["caption"], dec_id, cfg.max_length))
        mean = unwrap(m).text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=feats, labels=labels,
                                      reduction="mean").loss
        tokens = int((labels[:, 1:] != -100).sum())  # the decoder predicts every label after the first
        return global_mean(mean * tokens, tokens)  # over every process's caption tokens

    def caption(m, batch, preset):
        return generate_titles(m, tok, image_embeds(m, batch), preset, cfg.max_new_tokens)

    def save(m, folder):
        folder = Path(folder)
        settings = {"preset": cfg.preset, "max_new_tokens": cfg.max_new_tokens}
        if "features" in cached_keys:
            settings["encoder_features"] = "float16"  # scored on the feature cache's float16 outputs
        if hasattr(m, "get_base_model"):
            m.save_pretrained(folder / "adapter")
            (folder / SETTINGS_FILE).write_text(json.dumps({"base": base}, indent=2))
        else:
            m.save_pretrained(folder)
        processor.save_pretrained(folder)
        write_manifest(folder, BlipCaptioner.family, **settings)

    cached_keys = {"features"} if cached else set()

    return Recipe(model=model, loss=loss, caption=caption, save=save, load=lambda folder: load_blip(str(folder))[0])


class BlipCaptioner(Captioner):
    """The captioner interface over BLIP (a hub id, a save_pretrained folder, a task1/blip.py run or its
    best/). Manifest settings: preset, max_new_tokens and, for runs scored on cached vision features, their
    dtype ("encoder_features"), rounded the same way here so a photo gets the title the run's
    predictions.csv holds for it."""

    family = "blip"

    def __init__(self, model, processor, source, settings: dict | None = None):
        super().__init__(source, settings)
        self.model, self.processor = model, processor
        self.normalize = pixel_normalizer(processor.image_processor)
        self.feature_dtype = self.settings.get("encoder_features")

    @classmethod
    def load(cls, source, token=None, device=None, settings=None):
        model, processor = load_blip(str(source), token)
        return cls(model.to(default_device(device)), processor, source, settings)

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def caption(self, images, preset=None, top_k=0, max_new_tokens=None) -> list[Caption]:
        preset, max_new = self._decoding(preset, max_new_tokens)
        images = list(images)
        if not images:
            return []
        pixels = self.normalize(pixel_batch(images, self.processor.image_processor).to(self.model.device))
        hidden = self.model.vision_model(pixel_values=pixels).last_hidden_state
        if self.feature_dtype:
            hidden = hidden.to(getattr(torch, self.feature_dtype)).float()
        return [Caption(t) for t in generate_titles(self.model, self.processor.tokenizer, hidden, preset, max_new)]

    def save(self, folder) -> None:
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        write_manifest(folder, self.family, **self.settings)
