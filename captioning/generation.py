"""Named decoding presets shared by every script, and batched caption generation.

    greedy   one beam, no sampling: cheap, used for validation during training
    beam     4 beams (the nlpconnect model card's setting): the default for reported test numbers
    nucleus  top-p 0.9 sampling at temperature 0.8 with the original's repetition controls
"""
from __future__ import annotations

import torch

from .config import UserError
from .text import normalize

PRESETS = {
    "greedy": dict(do_sample=False, num_beams=1),
    "beam": dict(do_sample=False, num_beams=4, early_stopping=True),
    "nucleus": dict(do_sample=True, top_p=0.9, top_k=0, temperature=0.8, no_repeat_ngram_size=3,
                    repetition_penalty=1.2),
}


def generation_kwargs(preset: str = "beam", max_new_tokens: int = 24, **overrides) -> dict:
    """Keyword arguments for `model.generate` of a named preset; overrides win."""
    if preset not in PRESETS:
        raise UserError(f"unknown decoding preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return {**PRESETS[preset], "max_new_tokens": max_new_tokens, **overrides}


def decode(tokenizer, ids) -> list[str]:
    """Token ids -> normalised captions (special tokens dropped)."""
    return [normalize(t) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


@torch.no_grad()
def caption_pixels(model, pixel_values, tokenizer, preset="beam", max_new_tokens=24, **overrides):
    """Captions for a batch of normalised pixel values from a VisionEncoderDecoder (KV cache on)."""
    out = model.generate(pixel_values=pixel_values, **generation_kwargs(preset, max_new_tokens, **overrides))
    return decode(tokenizer, out)
