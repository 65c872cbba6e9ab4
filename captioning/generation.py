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


SHARED_BEAMS = "sdpa_shared_beams"


def _shared_beams_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, but when the keys/values hold one row per image and the queries one
    per beam (the cross-attention of `shared_beam_cache`), each image's beams attend as that image's
    queries: beams are consecutive rows of one image in generate, and cross-attention has no mask and
    no causality, so this is the same arithmetic as repeating the keys/values per beam."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    images, rows = key.shape[0], query.shape[0]
    if rows == images:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None or query.shape[2] != 1 or rows % images:
        raise ValueError(f"shared-beam attention: {rows} query rows of length {query.shape[2]} for {images} "
                         "images with a mask; only unmasked cross-attention of one new token per beam shares")
    beams = rows // images
    q = query.view(images, beams, *query.shape[1:]).squeeze(3).transpose(1, 2)  # images, heads, beams, dim
    out, _ = sdpa_attention_forward(module, q, key, value, None, **{**kwargs, "is_causal": False})
    return out.reshape(rows, 1, *out.shape[2:]), None  # images, beams, heads, dim -> rows, 1, heads, dim


@functools.cache
def _register_shared_beams() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SHARED_BEAMS, _shared_beams_attention)
    AttentionMaskInterface.register(SHARED_BEAMS, sdpa_mask)  # the decoder's own masks stay SDPA's
    return SHARED_BEAMS


def shared_beam_cache(model, hidden):
    """A BeamCache whose cross-attention keys/values are computed once per image, not once per beam, for
    a VisionEncoderDecoder with a GPT-2 decoder on SDPA attention; None for any other model.

    transformers repeats the encoder output for every beam and projects each copy: at 4 beams, 4x the
    work and memory for identical rows, and the attention of every new token reads all four copies (at
    ViT-GPT2 widths and batch 32, about a fifth of a beam search on CPU). Here the projection runs on
    `hidden` (images, tokens, width), and the decoder switches to an attention that is SDPA's except
    where keys/values have fewer rows than queries (`_shared_beams_attention`; saved configs never record it)."""
    from transformers import DynamicCache, GPT2LMHeadModel

    decoder = model.decoder
    if not isinstance(decoder, GPT2LMHeadModel) or decoder.config._attn_implementation not in ("sdpa", SHARED_BEAMS):
        return None
    if (model.encoder.config.hidden_size != decoder.config.hidden_size
            and getattr(decoder.config, "cross_attention_hidden_size", None) is None):
        hidden = model.enc_to_dec_proj(hidden)  # as VisionEncoderDecoderModel.forward does
    cross = DynamicCache()
    for i, block in enumerate(decoder.transformer.h):
        attn = block.crossattention
        keys, values = attn.c_attn(hidden).split(attn.split_size, dim=2)
        shape = (*keys.shape[:-1], -1, attn.head_dim)
        cross.update(keys.view(shape).transpose(1, 2), values.view(shape).transpose(1, 2), i)
    decoder.config._attn_implementation = _register_shared_beams()
    return _beam_cache_class()(DynamicCache(), cross)


@torch.no_grad()
def encoder_decoder_generate(model, kwargs: dict, pixel_values=None, hidden=None):
    """`model.generate` of a VisionEncoderDecoder on pixel values or on its encoder's output (`hidden`).
    A beam search gets a BeamCache (above), filled once per image where `shared_beam_cache` can."""
    from transformers import DynamicCache
    from transformers.modeling_outputs import BaseModelOutput

    if kwargs.get("num_beams", 1) > 1 and "cache" not in kwargs:
        if hidden is None:
            hidden = model.encoder(pixel_values=pixel_values).last_hidden_state
        cache = shared_beam_cache(model, hidden)
        if cache is None:  # (not `cache or ...`: an empty cache has length 0, so it is falsy)
            cache = _beam_cache_class()(DynamicCache(), DynamicCache())
        kwargs = {**kwargs, "cache": cache}
    if hidden is None:
        return model.generate(pixel_values=pixel_values, **kwargs)
    # a fresh BaseModelOutput per call: generate expands it in place for beams
    return model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), **kwargs)


@torch.no_grad()
def caption_pixels(model, pixel_values, tokenizer, preset="beam", max_new_tokens=24, **overrides):
    """Captions for a batch of normalised pixel values from a VisionEncoderDecoder (KV cache on)."""
    kwargs = generation_kwargs(preset, max_new_tokens, **overrides)
    return decode(tokenizer, encoder_decoder_generate(model, kwargs, pixel_values=pixel_values))


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
