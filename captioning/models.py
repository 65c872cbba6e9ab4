"""The VisionEncoderDecoder family (ViT-GPT2, or any image encoder + text decoder of transformers).

    model, processor, tokenizer = load_vit_gpt2(name)      # a hub id or a save_pretrained folder
    freeze(model, "vit")                                   # FREEZE_STRATEGIES
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg)   # what the engine trains
    VisionEncoderDecoderCaptioner                          # the family behind load_captioner

Token-id hygiene: nlpconnect/vit-gpt2-image-captioning uses id 50256 for bos = eos = pad =
decoder_start. Labels are therefore masked by the attention mask, never by `== pad_token_id`
(that would also erase the EOS target and the model would never learn to stop): tokens.encode_targets.
"""
from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutput

from .cache import pixel_datasets
from .captioner import Caption, Captioner, default_device, write_manifest
from .config import UserError
from .engine import Recipe, scoring_settings
from .generation import (caption_pixels, decode, encoder_decoder_generate, generation_kwargs, group_alternatives,
                         top_k_kwargs)
from .imaging import pixel_batch, pixel_normalizer, processor_size  # noqa: F401  (processor_size: old callers)
from .loading import check_local_or_hub, load_error, load_errors
from .sampling import encode
from .tokens import encode_targets

_load_errors, _load_error = load_errors, load_error  # the names used before captioning.loading existed

DEFAULT_MODEL = "nlpconnect/vit-gpt2-image-captioning"
# What to train (pick one):
#   "none"       fine-tune ViT and GPT-2 together
#   "vit"        freeze the ViT encoder, train GPT-2 (its cross-attention included)
#   "gpt2"       freeze GPT-2, train the ViT encoder
#   "gpt2-last4" freeze the deepest 4 GPT-2 blocks only, train the rest
FREEZE_STRATEGIES = ("none", "vit", "gpt2", "gpt2-last4")


def load_vit_gpt2(name: str = DEFAULT_MODEL, token: str | None = None):
    """(model, image_processor, tokenizer) from a hub id or a save_pretrained folder."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    check_local_or_hub(name)
    try:
        kind = AutoConfig.from_pretrained(name, token=token).model_type
        if kind != "vision-encoder-decoder":
            raise UserError(f"{name} is a {kind!r} model, not an image captioner (VisionEncoderDecoder) such "
                            f"as {DEFAULT_MODEL}.")
        model = VisionEncoderDecoderModel.from_pretrained(name, token=token)
        processor = AutoImageProcessor.from_pretrained(name, token=token, backend="pil")
        tokenizer = AutoTokenizer.from_pretrained(name, token=token)
    except load_errors() as e:
        raise load_error(name, e) from None
    fix_token_ids(model, tokenizer)
    return model, processor, tokenizer


def fix_token_ids(model, tokenizer) -> None:
    """Give tokenizer, config and generation_config one consistent set of special ids."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = tokenizer.eos_token_id
    start = model.config.decoder_start_token_id
    if start is None:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    ids = {"decoder_start_token_id": start, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": eos}
    if tokenizer.bos_token_id is not None:
        ids["bos_token_id"] = tokenizer.bos_token_id
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    model.config.decoder.pad_token_id = tokenizer.pad_token_id


def freeze(model, strategy: str) -> dict:
    """Apply a freeze strategy (see FREEZE_STRATEGIES); returns trainable/total parameter counts."""
    if strategy not in FREEZE_STRATEGIES:
        raise UserError(f"unknown freeze strategy {strategy!r}; choose one of {', '.join(FREEZE_STRATEGIES)}.")
    model.requires_grad_(True)
    if strategy == "vit":
        model.encoder.requires_grad_(False)
    elif strategy == "gpt2":
        model.decoder.requires_grad_(False)
    elif strategy == "gpt2-last4":
        for block in model.decoder.transformer.h[-4:]:
            block.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def vit_gpt2_recipe(model, processor, tokenizer, cfg, decoder_mask: bool = False, loss=None):
    """The engine Recipe of a ViT-GPT2 captioner: cross-entropy loss, batched captioning, save/load.

    decoder_mask=True also passes the decoder attention mask (padding never feeds the decoder).
    `loss(model, batch, state)` replaces the default cross-entropy (scheduled sampling, SCST, ...).
    Batches hold "pixels" (the pixel cache) or, for a frozen ViT, "features": its cached outputs,
    which the decoder reads as `encoder_outputs` without running the encoder.
    best/ is saved with its manifest (VisionEncoderDecoderCaptioner.save): the preset the run is
    scored with, and whether it was scored on cached features.
    """
    norm = pixel_normalizer(processor)

    def pixel_values(batch):
        return norm(batch["pixels"])

    def encoder_inputs(batch) -> dict:
        """The frozen encoder's cached outputs when the batch holds them (cache.pixel_datasets with an
        encoder), else the pixels, which the encoder then runs on."""
        if "features" in batch:
            # a fresh object per call: generate expands encoder_outputs in place for beams
            return {"encoder_outputs": BaseModelOutput(last_hidden_state=batch["features"].float())}
        return {"pixel_values": pixel_values(batch)}

    def xent(model, batch, state=None):
        from .distributed import global_mean

        labels, mask = encode_targets(tokenizer, batch["caption"], getattr(cfg, "max_length", 32))
        device = batch["features" if "features" in batch else "pixels"].device
        out = model(**encoder_inputs(batch), labels=labels.to(device),
                    decoder_attention_mask=mask.to(device) if decoder_mask else None)
        tokens = int(mask.sum())  # the mean over every process's caption tokens, not a mean of processes' means
        return global_mean(out.loss * tokens, tokens)

    def caption(model, batch, preset):
        if "features" in batch:
            out = encoder_decoder_generate(model, generation_kwargs(preset, cfg.max_new_tokens),
                                           hidden=batch["features"].float())
            return decode(tokenizer, out)
        return caption_pixels(model, pixel_values(batch), tokenizer, preset, cfg.max_new_tokens)

    def save(model, folder):
        settings = scoring_settings(cfg)
        if uses_feature_cache(cfg):
            settings["encoder_features"] = FEATURES_DTYPE
        VisionEncoderDecoderCaptioner(model, processor, tokenizer, folder, settings).save(folder)

    def load(folder):
        return load_vit_gpt2(str(folder))[0]

    def encoded(model, batch):
        """The encoder's outputs for the batch, shareable by several decoder passes and `generate`: a
        frozen ViT's cached features, else one encoder pass over the pixels."""
        if "features" in batch:
            return BaseModelOutput(last_hidden_state=batch["features"].float())
        return encode(model, pixel_values(batch))

    recipe = Recipe(model=model, loss=loss or xent, caption=caption, save=save, load=load)
    recipe.pixel_values, recipe.xent = pixel_values, xent  # for recipes that build on them
    recipe.encoder_inputs, recipe.encoded = encoder_inputs, encoded
    return recipe


# The frozen ViT's outputs are cached in this dtype (cache.feature_datasets' default) and a run with
# --freeze vit is scored on them as stored.
FEATURES_DTYPE = "float16"


def uses_feature_cache(cfg) -> bool:
    """With the ViT frozen (cfg.freeze == "vit") a recipe trains and is scored on its cached outputs."""
    return getattr(cfg, "freeze", "none") == "vit"


def vit_gpt2_datasets(cfg, model, processor, splits=("train", "valid", "test")) -> dict:
    """A ViT-GPT2 recipe's datasets: with the ViT frozen (uses_feature_cache) its outputs from the
    feature cache (computed once, on this process's GPU if there is one), else pixels from the pixel cache."""
    # the feature cache moves the encoder to this process's device only if it has to compute features
    encoder = model.encoder if uses_feature_cache(cfg) else None
    return pixel_datasets(cfg, processor, splits, encoder=encoder)


class VisionEncoderDecoderCaptioner(Captioner):
    """The captioner interface over a VisionEncoderDecoder (see captioning.captioner).

    Manifest settings: preset and max_new_tokens (the run's scoring), and "encoder_features": the dtype
    the encoder's outputs were stored in when the run was scored on cached features; they are rounded
    the same way here, so a photo gets the title the run's predictions.csv holds for it."""

    family = "vision-encoder-decoder"

    def __init__(self, model, processor, tokenizer, source, settings: dict | None = None):
        super().__init__(source, settings)
        self.model, self.processor, self.tokenizer = model, processor, tokenizer
        self.normalize = pixel_normalizer(processor)
        self.feature_dtype = self.settings.get("encoder_features")

    @classmethod
    def load(cls, source, token=None, device=None, settings=None):
        model, processor, tokenizer = load_vit_gpt2(str(source), token)
        return cls(model.to(default_device(device)).eval(), processor, tokenizer, source, settings)

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict:
        cfg = self.model.config
        return {**super().describe(), "model": f"{cfg.encoder.model_type} + {cfg.decoder.model_type}",
                "image_size": processor_size(self.processor)}

    @torch.no_grad()
    def encoder_outputs(self, images) -> torch.Tensor:
        pixels = self.normalize(pixel_batch(images, self.processor).to(self.model.device))
        if self.feature_dtype:  # the run read cached features: computed in full precision, stored rounded
            hidden = self.model.encoder(pixel_values=pixels).last_hidden_state
            return hidden.to(getattr(torch, self.feature_dtype)).float()
        with self.autocast(self.model.device):  # generate(pixel_values=...) ran the encoder under it too
            return self.model.encoder(pixel_values=pixels).last_hidden_state

    @torch.no_grad()
    def caption(self, images, preset=None, top_k=0, max_new_tokens=None) -> list[Caption]:
        preset, max_new = self._decoding(preset, max_new_tokens)
        images = list(images)
        if not images:
            return []
        self.model.eval()
        hidden = self.encoder_outputs(images)

        def generate(**kwargs):
            with self.autocast(self.model.device):
                return encoder_decoder_generate(self.model, kwargs, hidden=hidden)

        titles = decode(self.tokenizer, generate(**generation_kwargs(preset, max_new)))
        alternatives = [[] for _ in titles]
        if top_k > 0:
            out = generate(max_new_tokens=max_new, **top_k_kwargs(top_k))
            alternatives = group_alternatives(decode(self.tokenizer, out.sequences), out.sequences_scores, top_k)
        return [Caption(t, a) for t, a in zip(titles, alternatives)]

    def save(self, folder) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        write_manifest(folder, self.family, **self.settings)
