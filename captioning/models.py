"""Load ViT-GPT2 captioners, freeze parts of them, and keep their token ids straight.

Token-id hygiene: nlpconnect/vit-gpt2-image-captioning uses id 50256 for bos = eos = pad =
decoder_start. Labels are therefore masked by the attention mask, never by `== pad_token_id`
(that would also erase the EOS target and the model would never learn to stop).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import UserError

DEFAULT_MODEL = "nlpconnect/vit-gpt2-image-captioning"
# What to train (pick one):
#   "none"       fine-tune ViT and GPT-2 together
#   "vit"        freeze the ViT encoder, train GPT-2 (its cross-attention included)
#   "gpt2"       freeze GPT-2, train the ViT encoder
#   "gpt2-last4" freeze the deepest 4 GPT-2 blocks only, train the rest
FREEZE_STRATEGIES = ("none", "vit", "gpt2", "gpt2-last4")


def _load_errors() -> tuple:
    """What from_pretrained raises on a folder or file that is not a usable model: besides the usual
    OSError/ValueError, pickled weights that torch.load(weights_only=True) refuses to unpickle and
    safetensors files that are cut short or not safetensors at all."""
    import pickle

    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError, SafetensorError)


def _load_error(name, e: Exception) -> UserError:
    import pickle

    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    p = Path(name)
    if p.is_file():
        return UserError(f"{name} is a file, not a model folder; pass a folder written by save_pretrained "
                         "or a hub id.")
    if isinstance(e, pickle.UnpicklingError):
        return UserError(f"refusing to load the weights in {name}: they are a pickle that holds more than "
                         "tensors (possibly code); use a model saved as safetensors.")
    if type(e).__name__ == "SafetensorError":
        return UserError(f"the weights in {name} are damaged or not safetensors ({first[:120]}).")
    if p.exists() and not (p / "config.json").exists():
        return UserError(f"{name} is a folder but holds no model (no config.json); "
                         "pass a folder written by save_pretrained or a hub id.")
    return UserError(f"cannot load model {name!r}: it is neither a model folder nor a hub id that "
                     f"can be downloaded or found in the cache ({first[:160]}).")


def check_local_or_hub(name: str) -> None:
    """A path-like name that does not exist is a typo, not a hub id: say so early."""
    p = Path(name)
    if (name.startswith((".", "/", "~")) or p.exists() or name.count("/") > 1) and not p.exists():
        raise UserError(f"model folder {name} does not exist.")


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
    except _load_errors() as e:
        raise _load_error(name, e) from None
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


def encode_targets(tokenizer, captions: list[str], max_length: int = 32):
    """Caption token ids + EOS, right-padded. Returns (labels with -100 on padding, attention mask).

    The mask, not the pad id, marks padding, so the EOS target survives when pad == eos.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    seqs = [x[: max_length - 1] + [eos] for x in ids]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    return labels, mask


def pixel_normalizer(processor):
    """fn(uint8 NCHW tensor) -> normalised float pixel_values, as the processor would compute them."""
    mean = torch.tensor(getattr(processor, "image_mean", None) or [0.5] * 3).view(1, 3, 1, 1)
    std = torch.tensor(getattr(processor, "image_std", None) or [0.5] * 3).view(1, 3, 1, 1)
    scale = float(getattr(processor, "rescale_factor", 1 / 255))
    normalize = getattr(processor, "do_normalize", True)

    def fn(pixels: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        x = pixels.to(torch.float32) * scale
        if normalize:
            x = (x - mean.to(x.device)) / std.to(x.device)
        return x.to(dtype)

    return fn


def processor_size(processor) -> int:
    """The square input size the image processor resizes to."""
    size = getattr(processor, "size", None)
    for key in ("height", "shortest_edge", "width"):
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return 224


def vit_gpt2_recipe(model, processor, tokenizer, cfg, decoder_mask: bool = False, loss=None):
    """The engine Recipe of a ViT-GPT2 captioner: cross-entropy loss, batched captioning, save/load.

    decoder_mask=True also passes the decoder attention mask (padding never feeds the decoder).
    `loss(model, batch, state)` replaces the default cross-entropy (scheduled sampling, SCST, ...).
    Batches hold "pixels" (the pixel cache) or, for a frozen ViT, "features": its cached outputs,
    which the decoder reads as `encoder_outputs` without running the encoder.
    """
    from .engine import Recipe
    from .generation import caption_pixels

    norm = pixel_normalizer(processor)

    def pixel_values(batch):
        return norm(batch["pixels"])

    def encoder_inputs(batch) -> dict:
        """The frozen encoder's cached outputs when the batch holds them (cache.pixel_datasets with an
        encoder), else the pixels, which the encoder then runs on."""
        if "features" in batch:
            from transformers.modeling_outputs import BaseModelOutput

            # a fresh object per call: generate expands encoder_outputs in place for beams
            return {"encoder_outputs": BaseModelOutput(last_hidden_state=batch["features"].float())}
        return {"pixel_values": pixel_values(batch)}

    def xent(model, batch, state=None):
        labels, mask = encode_targets(tokenizer, batch["caption"], getattr(cfg, "max_length", 32))
        device = batch["features" if "features" in batch else "pixels"].device
        out = model(**encoder_inputs(batch), labels=labels.to(device),
                    decoder_attention_mask=mask.to(device) if decoder_mask else None)
        return out.loss

    def caption(model, batch, preset):
        if "features" in batch:
            from .generation import decode, generation_kwargs

            out = model.generate(**encoder_inputs(batch), **generation_kwargs(preset, cfg.max_new_tokens))
            return decode(tokenizer, out)
        return caption_pixels(model, pixel_values(batch), tokenizer, preset, cfg.max_new_tokens)

    def save(model, folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)

    def load(folder):
        return load_vit_gpt2(str(folder))[0]

    def encoded(model, batch):
        """The encoder's outputs for the batch, shareable by several decoder passes and `generate`: a
        frozen ViT's cached features, else one encoder pass over the pixels."""
        if "features" in batch:
            from transformers.modeling_outputs import BaseModelOutput

            return BaseModelOutput(last_hidden_state=batch["features"].float())
        from .sampling import encode

        return encode(model, pixel_values(batch))

    recipe = Recipe(model=model, loss=loss or xent, caption=caption, save=save, load=load)
    recipe.pixel_values, recipe.xent = pixel_values, xent  # for recipes that build on them
    recipe.encoder_inputs, recipe.encoded = encoder_inputs, encoded
    return recipe


def vit_gpt2_datasets(cfg, model, processor, splits=("train", "valid", "test")) -> dict:
    """A ViT-GPT2 recipe's datasets: with the ViT frozen (cfg.freeze == "vit") its outputs from the
    feature cache (computed once, on the GPU if there is one), else pixels from the pixel cache."""
    from .cache import pixel_datasets

    encoder = None
    if getattr(cfg, "freeze", "none") == "vit":
        import torch

        encoder = model.encoder.to("cuda" if torch.cuda.is_available() else "cpu")
    return pixel_datasets(cfg, processor, splits, encoder=encoder)
