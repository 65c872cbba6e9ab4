"""Named decoding presets shared by every script, and batched caption generation.

    greedy   one beam, no sampling: cheap, used for validation during training
    beam     4 beams (the nlpconnect model card's setting): the default for reported test numbers
    nucleus  top-p 0.9 sampling at temperature 0.8 with the original's repetition controls

Top-k alternatives (the captioner interface's `top_k`): a k-beam search returning its k best
captions, each scored by its mean log-probability per token (beam search's length-normalised score;
0 would be certain, more negative is less likely).
"""
from __future__ import annotations

import functools

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


@functools.cache
def _beam_cache_class():
    from transformers import EncoderDecoderCache

    class BeamCache(EncoderDecoderCache):
        """An encoder-decoder cache whose beam-search reordering leaves the cross-attention keys and values
        alone: every beam of one image holds the same ones (computed from the same encoder output), and beam
        search only reorders beams within an image, so the copy changed nothing. It cost, per generated
        token, a copy of the whole cross-attention cache: batch x beams x 197 image tokens x width x 2 per
        layer (ViT-GPT2 at batch 32: 1.9 GB a token at full depth)."""

        def reorder_cache(self, beam_idx):
            self.self_attention_cache.reorder_cache(beam_idx)

    return BeamCache


def encoder_decoder_kwargs(kwargs: dict) -> dict:
    """`generate` kwargs for a VisionEncoderDecoder: a beam search gets a BeamCache (above)."""
    if kwargs.get("num_beams", 1) > 1 and "cache" not in kwargs:
        from transformers import DynamicCache

        kwargs = {**kwargs, "cache": _beam_cache_class()(DynamicCache(), DynamicCache())}
    return kwargs


@torch.no_grad()
def caption_pixels(model, pixel_values, tokenizer, preset="beam", max_new_tokens=24, **overrides):
    """Captions for a batch of normalised pixel values from a VisionEncoderDecoder (KV cache on)."""
    kwargs = encoder_decoder_kwargs(generation_kwargs(preset, max_new_tokens, **overrides))
    return decode(tokenizer, model.generate(pixel_values=pixel_values, **kwargs))


def top_k_kwargs(k: int) -> dict:
    """`generate` arguments of a k-beam search that returns its k best sequences with their scores."""
    return dict(do_sample=False, num_beams=max(2, k), num_return_sequences=k, early_stopping=True,
                output_scores=True, return_dict_in_generate=True)


def group_alternatives(titles: list[str], scores, k: int) -> list[list[tuple[str, float]]]:
    """k titles per image (generate's order) -> per image [(title, score)], best first, repeats dropped."""
    out = []
    for i in range(0, len(titles), k):
        seen, alts = set(), []
        for title, score in zip(titles[i:i + k], [float(s) for s in scores[i:i + k]]):
            if title not in seen:
                seen.add(title)
                alts.append((title, round(score, 4)))
        out.append(sorted(alts, key=lambda a: -a[1]))
    return out
