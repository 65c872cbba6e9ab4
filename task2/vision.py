"""The frozen image encoder of task2 and the projector that carries its features into the LLM.

    encoder, processor = load_vision("google/vit-base-patch16-224-in21k")   # or a folder
    encoder, processor = load_vision("runs/vit_gpt2_finetuned/best")      # task1's trained ViT
    projector = Projector(encoder.config.hidden_size, llm_dim, pool="none")

The encoder never trains here, so its outputs are computed once per image by
captioning.cache.feature_cache; the Projector is what learns (with the LoRA adapter).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from captioning.config import UserError
from captioning.models import _load_error, _load_errors, check_local_or_hub

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
    if path.is_dir() and not (path / "config.json").exists() and (path / "best" / "config.json").exists():
        name = str(path / "best")  # a task1 run folder: the encoder of its best epoch
    check_local_or_hub(name)
    errors = _load_errors()  # includes refused pickles and damaged safetensors
    try:
        config = AutoConfig.from_pretrained(name, token=token)
    except errors as e:
        raise _load_error(name, e) from None
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
        raise _load_error(name, e) from None
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
