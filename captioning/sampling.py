"""Training with the model's own tokens: schedules, scheduled sampling, nucleus picks.

    ramp(progress, "linear", start, end)        a value moving from start to end as training runs
    scheduled_sampling_loss(model, enc, labels, mask, ratio, pick)
                                                 Bengio et al. 2015 for a transformer decoder

A transformer decoder reads the whole target at once, so scheduled sampling takes two passes over
one shared encoder output: a first pass without gradients, fed the gold caption, gives the model's
prediction at every position; each decoder input token (after the start token) then stays gold
with probability `ratio` and is replaced by the prediction for that position otherwise; the
second pass, fed this mixture, is trained against the gold labels. ratio = 1 is plain teacher
forcing, exactly.
"""
from __future__ import annotations

import math

import torch
from transformers.modeling_outputs import BaseModelOutput

from .distributed import global_mean
from .tokens import encode_targets

# How a value moves from `start` to `end` over training (progress 0 -> 1):
#   "constant"         stays at start
#   "linear"           straight line
#   "quadratic"        start + (end - start) * progress**2: slow at first (the original's weight)
#   "inverse_sigmoid"  Bengio et al.'s S-curve, centred on the middle of training
SCHEDULES = ("constant", "linear", "quadratic", "inverse_sigmoid")


def ramp(progress: float, schedule: str, start: float, end: float) -> float:
    p = min(1.0, max(0.0, float(progress)))
    if schedule == "constant":
        w = 0.0
    elif schedule == "linear":
        w = p
    elif schedule == "quadratic":
        w = p * p
    elif schedule == "inverse_sigmoid":
        lo, hi = 1 / (1 + math.exp(6)), 1 / (1 + math.exp(-6))
        w = (1 / (1 + math.exp(-12 * (p - 0.5))) - lo) / (hi - lo)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    return start + (end - start) * w


def encode(model, pixel_values, grad: bool | None = None) -> BaseModelOutput:
    """One encoder pass, shareable by several decoder passes and by `generate(encoder_outputs=...)`.
    Gradients flow only if the encoder has trainable parameters (grad=None) or grad=True."""
    enc = getattr(model, "module", model).encoder
    if grad is None:
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in enc.parameters())
    with torch.set_grad_enabled(grad):
        return BaseModelOutput(last_hidden_state=enc(pixel_values=pixel_values).last_hidden_state)


def gold_targets(tokenizer, batch: dict, max_length: int = 32):
    """(labels with -100 on padding, attention mask) of the batch's captions, on the batch's device."""
    labels, mask = encode_targets(tokenizer, batch["caption"], max_length)
    source = batch.get("pixels", batch.get("features"))
    device = source.device if source is not None else None
    return labels.to(device), mask.to(device)


def argmax_pick(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def nucleus_pick(top_p: float = 0.9, temperature: float = 0.8):
    """A pick function sampling each position from the smallest token set holding top_p of the mass."""

    def pick(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float() / max(temperature, 1e-6), -1)
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the most likely token is always kept
        sorted_p = sorted_p * keep
        flat = sorted_p.reshape(-1, sorted_p.shape[-1])
        choice = torch.multinomial(flat, 1).view(sorted_p.shape[:-1] + (1,))
        return order.gather(-1, choice).squeeze(-1)

    return pick


def teacher_forcing_loss(model, encoder_outputs, labels, mask):
    """Plain cross-entropy with the gold caption as decoder input, on precomputed encoder outputs."""
    return scheduled_sampling_loss(model, encoder_outputs, labels, mask, 1.0)


def scheduled_sampling_loss(model, encoder_outputs, labels, mask, ratio: float, pick=argmax_pick,
                            start_id: int | None = None, pad_id: int | None = None, generator=None):
    """Cross-entropy against the gold `labels` ([B, T], -100 on padding) with decoder inputs that are
    gold with probability `ratio` and the model's own picks otherwise (see the module docstring)."""
    cfg = getattr(model, "module", model).config
    start_id = cfg.decoder_start_token_id if start_id is None else start_id
    pad_id = cfg.pad_token_id if pad_id is None else pad_id
    # imported here: the modelling module pulls in torch._dynamo and sympy (~2 s), which a script that
    # stops at a bad argument should not pay
    from transformers.models.vision_encoder_decoder.modeling_vision_encoder_decoder import shift_tokens_right

    inputs = shift_tokens_right(labels, pad_id, start_id)  # the model's own shift: start token, -100 -> pad
    if ratio < 1.0:
        with torch.no_grad():
            first = BaseModelOutput(last_hidden_state=encoder_outputs.last_hidden_state.detach())
            logits = model(encoder_outputs=first, decoder_input_ids=inputs,
                           decoder_attention_mask=mask).logits
            predicted = pick(logits)  # predicted[:, t] guesses labels[:, t] = inputs[:, t + 1]
            coin = torch.rand(inputs[:, 1:].shape, generator=generator, device=inputs.device)
            own = (coin >= ratio) & (mask[:, :-1] > 0)  # inputs[:, t + 1] is real iff labels[:, t] is
            inputs = inputs.clone()
            inputs[:, 1:] = torch.where(own, predicted[:, :-1], inputs[:, 1:])
    loss = model(encoder_outputs=encoder_outputs, decoder_input_ids=inputs, decoder_attention_mask=mask,
                 labels=labels).loss
    tokens = int((labels != -100).sum())  # averaged over every process's caption tokens
    return global_mean(loss * tokens, tokens)
