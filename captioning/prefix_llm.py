"""The prefix-LLM family (task2): a frozen image encoder, a projector and a causal LLM with LoRA.

    llm, tokenizer = get_llm("meta-llama/Llama-3.2-1B", token)      # token: --hf-token or $HF_TOKEN
    llm = add_peft(llm, "r8")                                      # LORA presets
    encoder, processor = load_vision("google/vit-base-patch16-224-in21k")   # or a task1 run's best/
    projector = Projector(encoder.config.hidden_size, llm_dim, pool="none")
    model = AnyModalCaptioner(llm, tokenizer, projector, settings)  # loss, batched generate, save/load
    PrefixLLMCaptioner                                             # the family behind load_captioner

Every sequence the LLM sees is   [BOS] [projected image tokens] [prompt] [caption] [EOS]
built as embeddings (`inputs_embeds`). Training puts labels on the caption and its EOS only
(-100 on the image, the prompt and the padding; padding is marked by the attention mask, so an
EOS that shares the pad id is still a target). Generation runs batched from the embeddings of
[BOS][image][prompt], left-padded when prompts differ in length, with the KV cache; position ids
follow the attention mask so a padded row sees the same positions as an unpadded one.

The encoder never trains, so its outputs are computed once per image by captioning.cache.feature_cache
(stored as float16); the projector and the LoRA adapter are what learn. Llama 3.2 is gated on the
Hugging Face hub: accept its licence there, then pass a token. The token goes only to
`from_pretrained`; it is never printed, logged or saved.

A trained captioner is saved as a folder: adapter/ (peft, safetensors), projector.safetensors,
tokenizer/, anymodal.json (what is needed to rebuild it: base LLM, vision encoder and the
fingerprint of its weights, projector shape, prompt) and the manifest captioner.json.
task2/llm.py, vision.py and anymodal.py are the recipe-facing names of these pieces.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from .captioner import Caption, Captioner, default_device, write_manifest
from .config import UserError
from .distributed import global_mean
from .engine import Recipe, scoring_settings
from .generation import decode, generation_kwargs, group_alternatives, top_k_kwargs
from .imaging import pixel_batch, pixel_normalizer
from .loading import check_local_or_hub, load_error, load_errors


# ------------------------------------------------------------------------------ the LLM and LoRA
DEFAULT_LLM = "meta-llama/Llama-3.2-1B"
# Every linear layer of the Llama blocks gets an adapter (attention and MLP).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The LoRA settings of the original (pick one with --lora):
#   "r8"  Llama 3.2 1B: rank 8, alpha 32, dropout 0.1
#   "r4"  Llama 3.2 3B: rank 4, alpha 16, dropout 0.1
#   "r2"  Llama 3.2 3B, the smaller adapter also tried: rank 2, alpha 16, dropout 0.1
#   "auto" r8 for models up to 2B parameters, r4 above
LORA = {
    "r8": dict(r=8, lora_alpha=32, lora_dropout=0.1),
    "r4": dict(r=4, lora_alpha=16, lora_dropout=0.1),
    "r2": dict(r=2, lora_alpha=16, lora_dropout=0.1),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def get_llm(name: str = DEFAULT_LLM, token: str | None = None, dtype: str = "float32"):
    """(causal LM, tokenizer) from a hub id or a save_pretrained folder.

    Llama 3 ships no pad token: the tokenizer gets pad = eos, and padding is always marked by the
    attention mask (never by the pad id), so the EOS target survives."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_local_or_hub(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, token=token)
        model = AutoModelForCausalLM.from_pretrained(name, token=token, dtype=DTYPES[dtype])
    except load_errors() as e:  # includes refused pickles and damaged safetensors
        text = str(e).lower()
        if any(w in text for w in ("gated", "401", "403", "restricted")):
            raise UserError(f"{name} is gated on the Hugging Face hub: accept its licence on the model page "
                            "and pass a token with --hf-token or HF_TOKEN.") from None
        raise load_error(name, e) from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of {name} has no EOS token: captions could never stop.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def pick_lora(model, lora: str = "auto") -> str:
    """The LoRA preset to use: `lora`, or for "auto" the original's choice by model size."""
    if lora == "auto":
        return "r8" if sum(p.numel() for p in model.parameters()) <= 2e9 else "r4"
    if lora not in LORA:
        raise UserError(f"unknown LoRA preset {lora!r}; choose one of auto, {', '.join(LORA)}.")
    return lora


def add_peft(model, lora: str = "r8"):
    """Wrap `model` with a LoRA adapter on every linear layer of its blocks; the base stays frozen."""
    from peft import LoraConfig, get_peft_model

    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in present]
    if not targets:
        raise UserError(f"{type(model).__name__} has none of the Llama layers LoRA adapts "
                        f"({', '.join(LORA_TARGETS)}).")
    config = LoraConfig(task_type="CAUSAL_LM", target_modules=targets, **LORA[pick_lora(model, lora)])
    return get_peft_model(model, config)


# ------------------------------------------------------------- the image encoder and the projector
DEFAULT_VISION = "google/vit-base-patch16-224-in21k"
# Which image tokens reach the LLM (Projector.pool):
#   "none"  every token (CLS + 196 patches for ViT-B/16 at 224 px): the most detail, the longest prefix
#   "cls"   the CLS token only
#   "mean"  the mean of the patch tokens: one token
#   "2x2", "4x4"  the patch grid average-pooled to 4 or 16 tokens
POOLS = ("none", "cls", "mean", "2x2", "4x4")


def load_vision(name: str = DEFAULT_VISION, token: str | None = None):
    """(frozen encoder in eval mode, image processor) from a hub id, a model folder, or a task1 run.

    A VisionEncoderDecoder folder (task1's runs/<run>/best, or the run folder itself) gives its encoder;
    a CLIP/SigLIP-style model gives its image tower; anything else loads with AutoModel."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, VisionEncoderDecoderModel

    path = Path(name)
    if path.is_dir() and (path / "best" / "config.json").exists():
        name = str(path / "best")  # a task1 run folder: the encoder of its best epoch
    check_local_or_hub(name)
    errors = load_errors()  # includes refused pickles and damaged safetensors
    try:
        config = AutoConfig.from_pretrained(name, token=token)
    except errors as e:
        raise load_error(name, e) from None
    try:
        processor = AutoImageProcessor.from_pretrained(name, token=token, backend="pil")
    except errors:
        raise UserError(f"{name} is a {config.model_type} model with no image processor, not an image "
                        "encoder; pass a ViT (hub id or folder) or a task1 run's best/ folder.") from None
    try:
        if config.model_type == "vision-encoder-decoder":
            encoder = VisionEncoderDecoderModel.from_pretrained(name, token=token).encoder
        else:
            encoder = AutoModel.from_pretrained(name, token=token)
            encoder = getattr(encoder, "vision_model", encoder)
    except errors as e:
        raise load_error(name, e) from None
    if not hasattr(encoder.config, "hidden_size"):
        raise UserError(f"{name} is not an image encoder with a hidden_size (it is a {config.model_type}).")
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # unused: the LLM reads the token sequence
    return encoder.requires_grad_(False).eval(), processor


def recorded_name(name: str) -> str:
    """The encoder's name as a run records it: an absolute path for local folders, else the hub id."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def pool_tokens(features: torch.Tensor, pool: str) -> torch.Tensor:
    """[B, T, D] encoder tokens -> [B, T', D] as `pool` says (see POOLS)."""
    if pool == "none":
        return features
    if pool == "cls":
        return features[:, :1]
    side = math.isqrt(features.shape[1] - 1)
    patches = features[:, 1:] if side * side == features.shape[1] - 1 else features  # drop CLS if present
    if pool == "mean":
        return patches.mean(1, keepdim=True)
    side, k = math.isqrt(patches.shape[1]), int(pool.split("x")[0])
    if side * side != patches.shape[1]:
        raise UserError(f"pool {pool!r} needs a square grid of patch tokens; "
                        f"this encoder gives {patches.shape[1]}.")
    grid = patches.transpose(1, 2).reshape(len(patches), -1, side, side)
    return nn.functional.adaptive_avg_pool2d(grid, k).flatten(2).transpose(1, 2)


class Projector(nn.Module):
    """Encoder features [B, T, in_dim] -> LLM input embeddings [B, T', out_dim].

    Optional pooling of the tokens, then an MLP: `layers` Linear layers with GELU between them
    (layers=1: a single Linear, no non-linearity); hidden width `hidden` (0 = out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0, layers: int = 2, pool: str = "none"):
        super().__init__()
        if pool not in POOLS:
            raise UserError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}.")
        if layers < 1:
            raise UserError(f"the projector needs at least one layer (got {layers}).")
        self.settings = dict(in_dim=in_dim, out_dim=out_dim, hidden=hidden, layers=layers, pool=pool)
        dims = [in_dim] + [hidden or out_dim] * (layers - 1) + [out_dim]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(dims[i], dims[i + 1])] + ([nn.GELU()] if i < layers - 1 else [])
        self.net = nn.Sequential(*mods)
        self.pool = pool

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.net[0].weight.dtype)
        return self.net(pool_tokens(x, self.pool))


# ------------------------------------------------------------------------------- the captioner
SETTINGS_FILE = "anymodal.json"


class AnyModalCaptioner(nn.Module):
    def __init__(self, llm, tokenizer, projector, settings: dict):
        super().__init__()
        self.llm, self.projector, self.tokenizer, self.settings = llm, projector, tokenizer, settings
        self.prompt = settings.get("prompt", "")
        self.max_length = int(settings.get("max_length", 32))
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.stats = Counter()  # captions generated / of them ended by EOS

    # ----------------------------------------------------------------------------------- inputs
    def _embed(self, ids: list[int], device) -> torch.Tensor:
        return self.llm.get_input_embeddings()(torch.tensor(ids, dtype=torch.long, device=device))

    def prefix(self, features: torch.Tensor, prompts: list[str] | None = None):
        """Embeddings and mask of [BOS][image][prompt] per image, left-padded to one length."""
        image = self.projector(features)
        dtype, device = self.llm.get_input_embeddings().weight.dtype, image.device
        prompts = prompts or [self.prompt] * len(image)
        rows = []
        for img, prompt in zip(image, prompts):
            # the prompt's trailing space moves to the caption, so words tokenize as in running text
            ids = self.tokenizer(prompt.rstrip(), add_special_tokens=False)["input_ids"]
            rows.append(torch.cat([self._embed(self.bos, device), img.to(dtype), self._embed(ids, device)]))
        width = max(len(r) for r in rows)
        embeds = image.new_zeros((len(rows), width, rows[0].shape[-1]), dtype=dtype)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            embeds[i, width - len(r):], mask[i, width - len(r):] = r, 1
        return embeds, mask

    def targets(self, captions: list[str], device):
        """Caption ids + EOS, right-padded: (ids, mask, labels with -100 on padding)."""
        ids = self.tokenizer([" " + c for c in captions], add_special_tokens=False)["input_ids"]
        seqs = [x[: self.max_length - 1] + [self.eos_id] for x in ids]
        width = max(len(s) for s in seqs)
        out = torch.full((len(seqs), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(out)
        for i, s in enumerate(seqs):
            out[i, : len(s)], mask[i, : len(s)] = torch.tensor(s, device=device), 1
        return out, mask, out.masked_fill(mask == 0, -100)

    def forward(self, features: torch.Tensor, captions: list[str], prompts: list[str] | None = None,
                mean: bool = True):
        """Mean cross-entropy of the captions (and their EOS) given the images; mean=False gives
        (summed cross-entropy, number of target tokens) instead."""
        embeds, mask = self.prefix(features, prompts)
        ids, cap_mask, labels = self.targets(captions, embeds.device)
        embeds = torch.cat([embeds, self.llm.get_input_embeddings()(ids)], 1)
        mask = torch.cat([mask, cap_mask], 1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        # Logits only where a caption token (or its EOS) is predicted: the prefix's last position and the
        # caption's. The image and prompt positions carry no loss, and the vocabulary projection over
        # them (128k words for Llama 3.2, ~200 image positions) would be a fifth of the LLM's work.
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                          logits_to_keep=ids.shape[1] + 1).logits[:, :-1]
        total = nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                            reduction="sum")
        tokens = int(cap_mask.sum())
        return total / max(1, tokens) if mean else (total, tokens)

    # ------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, features, preset: str = "greedy", max_new_tokens: int = 24, prompts=None, **overrides):
        """New token ids for a batch of images (one row each, padded after EOS)."""
        embeds, mask = self.prefix(features, prompts)
        kwargs = generation_kwargs(preset, max_new_tokens, **overrides)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, eos_token_id=self.eos_id,
                                 pad_token_id=self.pad_id, **kwargs)

    def caption(self, features, preset: str = "greedy", max_new_tokens: int = 24, prompts=None) -> list[str]:
        out = self.generate(features, preset, max_new_tokens, prompts)
        self.stats["captions"] += len(out)
        self.stats["ended_with_eos"] += int((out == self.eos_id).any(1).sum())
        return decode(self.tokenizer, out)

    # --------------------------------------------------------------------------------- save/load
    def save(self, folder) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.llm.save_pretrained(folder / "adapter")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()},
                  folder / "projector.safetensors")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        (folder / SETTINGS_FILE).write_text(json.dumps(self.settings, indent=2))

    @classmethod
    def load(cls, folder, token: str | None = None, llm_name: str | None = None) -> "AnyModalCaptioner":
        """Rebuild a saved captioner: base LLM (`llm_name` overrides the recorded one), adapter, projector."""
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        folder = Path(folder)
        if (folder / "best" / SETTINGS_FILE).exists():
            folder = folder / "best"  # a run folder: its best epoch
        if not (folder / SETTINGS_FILE).exists():
            raise UserError(f"{folder} is not a trained task2 captioner (no {SETTINGS_FILE}); "
                            "pass a run folder written by task2/train.py.")
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text())
            projector = Projector(**settings["projector"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{folder / SETTINGS_FILE} is damaged ({type(e).__name__}: {e}).") from None
        llm, _ = get_llm(llm_name or settings["llm"], token, settings.get("llm_dtype", "float32"))
        try:
            llm = PeftModel.from_pretrained(llm, folder / "adapter")
            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
            projector.load_state_dict(load_file(folder / "projector.safetensors"))
        except (*load_errors(), RuntimeError) as e:  # RuntimeError: tensors of the wrong shape
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"the trained captioner in {folder} is incomplete or damaged "
                            f"({first[:160]}).") from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(llm, tokenizer, projector, settings).eval()


def anymodal_recipe(model: AnyModalCaptioner, cfg, token: str | None = None) -> Recipe:
    """The engine Recipe: loss on batch["features"] + captions, batched captioning, save/load.
    best/ gets the manifest too, with the preset the run is scored with."""

    def loss(model, batch, state=None):
        total, tokens = model(batch["features"], batch["caption"], mean=False)
        return global_mean(total, tokens)  # over every process's caption tokens

    def caption(model, batch, preset):
        return model.caption(batch["features"], preset, cfg.max_new_tokens)

    def save(model, folder):
        model.save(folder)
        write_manifest(folder, PrefixLLMCaptioner.family, **scoring_settings(cfg))

    return Recipe(model=model, loss=loss, caption=caption, save=save,
                  load=lambda folder: AnyModalCaptioner.load(folder, token))


# The feature cache stores the encoder's outputs in this dtype; a run is trained and scored on them as stored.
FEATURES_DTYPE = "float16"


def matching_encoder(model: AnyModalCaptioner, vision: str | None = None, token: str | None = None):
    """(encoder, processor, fingerprint) of the image encoder a trained captioner reads (`vision`, else the
    one it recorded); one sentence when its weights are not the ones the captioner was trained on."""
    from .cache import encoder_fingerprint

    vision = vision or model.settings["vision_model"]
    encoder, processor = load_vision(vision, token)
    fingerprint = encoder_fingerprint(encoder)
    if fingerprint != model.settings.get("vision_fingerprint", fingerprint):
        raise UserError(f"the image encoder {vision} no longer has the weights this captioner was trained on; "
                        "its captions would be meaningless (pass the original encoder).")
    return encoder, processor, fingerprint


class PrefixLLMCaptioner(Captioner):
    """The captioner interface over a trained task2 run: its image encoder runs on the photos, its
    outputs are rounded to the feature cache's dtype (what the run was trained and scored on), then
    projected into the LLM, which writes the title."""

    family = "prefix-llm"
    default_preset = "greedy"

    def __init__(self, model: AnyModalCaptioner, encoder, processor, source, settings: dict | None = None):
        super().__init__(source, settings)
        self.model, self.encoder, self.processor = model, encoder, processor
        self.normalize = pixel_normalizer(processor)

    @classmethod
    def load(cls, source, token=None, device=None, settings=None):
        model = AnyModalCaptioner.load(source, token)
        encoder, processor, _ = matching_encoder(model, token=token)
        device = default_device(device)
        return cls(model.to(device), encoder.to(device), processor, source, settings)

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters()) + sum(p.numel() for p in self.encoder.parameters())

    def describe(self) -> dict:
        s = self.model.settings
        return {**super().describe(), "model": f"{s.get('vision_model')} + projector + {s.get('llm')} (LoRA "
                f"{s.get('lora', '?')})", "prompt": self.model.prompt}

    @torch.no_grad()
    def caption(self, images, preset=None, top_k=0, max_new_tokens=None) -> list[Caption]:
        preset, max_new = self._decoding(preset, max_new_tokens)
        images = list(images)
        if not images:
            return []
        device = next(self.encoder.parameters()).device
        pixels = self.normalize(pixel_batch(images, self.processor).to(device))
        features = self.encoder(pixel_values=pixels).last_hidden_state
        features = features.to(getattr(torch, FEATURES_DTYPE)).float()
        with self.autocast(device):
            titles = self.model.caption(features, preset, max_new)
        alternatives = [[] for _ in titles]
        if top_k > 0:
            with self.autocast(device):
                out = self.model.generate(features, "greedy", max_new, **top_k_kwargs(top_k))
            alternatives = group_alternatives(decode(self.model.tokenizer, out.sequences), out.sequences_scores,
                                              top_k)
        return [Caption(t, a) for t, a in zip(titles, alternatives)]

    def save(self, folder) -> None:
        self.model.save(folder)
        write_manifest(folder, self.family, **self.settings)
