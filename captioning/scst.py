"""Self-critical sequence training (Rennie et al. 2017) for VisionEncoderDecoder captioners.

    reward = make_reward("cider", train_references)          # fn(captions, references) -> array
    out = scst_step(model, encoder_outputs, references, tokenizer, reward, k=5, baseline="greedy")
    out.loss.backward()

One encoder pass feeds everything: K captions sampled per image (top-p, `generate` with the KV
cache), the greedy baseline, and the pass that gives the samples' log-probabilities with
gradients. A caption's log-probability sums its tokens up to and including the first EOS, so the
padding that `generate` appends after EOS is never trained. The loss is
    -mean_i (reward_i - baseline_i) * log p(caption_i)
so a sample that beats its baseline is made more likely and one that falls short less likely.
Baselines: "greedy" (the greedy caption's reward, Rennie et al. 2017) or "mean" (the mean reward
of the image's other K-1 samples, Luo 2020; no extra decoding).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from .distributed import global_mean
from .generation import decode
from .metrics import CiderD, meteor_scores

REWARDS = ("cider", "meteor", "mix", "clip", "cider+clip")
BASELINES = ("greedy", "mean")


class ClipReward:
    """CLIPScore of each caption against its image, for SCST: the images' CLIP embeddings are computed
    once (the feature cache), then each call embeds only the captions not seen before
    (ClipScorer.text_embeddings remembers them).

    reward = ClipReward(load_clip(name), train_dataset.records)
    reward(captions, images)    # images[i]: the position in train_dataset of caption i's image
    """

    def __init__(self, scorer, records, cache_dir=None, workers: int = 0):
        from .semantic import CLIP_WEIGHT

        self.scorer, self.weight = scorer, CLIP_WEIGHT
        emb, kept = scorer.image_embeddings(records, cache_dir, workers)
        self.images = np.zeros((len(records), emb.shape[1] if len(kept) else 0), np.float32)
        self.images[kept] = emb

    def __call__(self, captions, images) -> np.ndarray:
        if images is None:
            raise ValueError("the CLIP reward needs each caption's image (scst_step(..., images=batch['index']))")
        text = self.scorer.text_embeddings(list(captions))
        return self.weight * np.clip((text * self.images[np.asarray(images)]).sum(1), 0, None)


def clip_reward(cfg, records) -> ClipReward:
    """The ClipReward of a run's training images with cfg.clip_model; a CLIP that cannot be loaded
    stops the run with one sentence (a reward cannot be skipped the way an evaluation score can)."""
    from .config import UserError, hf_token
    from .semantic import Skipped, load_clip

    if not cfg.clip_model:
        raise UserError(f"--reward {cfg.reward} needs a CLIP model: pass --clip-model.")
    try:
        scorer = load_clip(cfg.clip_model, hf_token(cfg.hf_token))
    except Skipped as e:
        raise UserError(f"--reward {cfg.reward}: {e}.") from None
    return ClipReward(scorer, records, cfg.cache_dir or None, cfg.workers)


def make_reward(kind: str, train_references, meteor_weight: float = 0.5, clip: ClipReward | None = None,
                clip_weight: float = 0.5):
    """fn(captions, references, images=None) -> numpy array of rewards.

    "cider"      CIDEr-D with document frequencies computed once from `train_references`
    "meteor"     METEOR from one long-lived Java process, a whole batch per call
    "mix"        (1 - meteor_weight) * CIDEr-D + meteor_weight * METEOR
    "clip"       CLIPScore of the caption against its image (`clip`, a ClipReward; no reference used)
    "cider+clip" (1 - clip_weight) * CIDEr-D + clip_weight * CLIPScore
    `images` (positions in the training split, one per caption) is needed by the CLIP rewards only.
    """
    if kind not in REWARDS:
        raise ValueError(f"unknown reward {kind!r}; choose one of {', '.join(REWARDS)}")
    if "clip" in kind and clip is None:
        raise ValueError(f"the {kind!r} reward needs a ClipReward")
    cider = CiderD(train_references) if kind in ("cider", "mix", "cider+clip") else None

    def meteor(caps, refs):
        return np.asarray(meteor_scores(caps, refs), dtype=float)

    parts = {"cider": lambda c, r, i: cider.scores(c, r), "meteor": lambda c, r, i: meteor(c, r),
             "clip": lambda c, r, i: clip(c, i)}
    weights = {"cider": {"cider": 1.0}, "meteor": {"meteor": 1.0}, "clip": {"clip": 1.0},
               "mix": {"cider": 1 - meteor_weight, "meteor": meteor_weight},
               "cider+clip": {"cider": 1 - clip_weight, "clip": clip_weight}}[kind]

    def reward(captions, references, images=None):
        return sum(w * np.asarray(parts[name](captions, references, images), dtype=float)
                   for name, w in weights.items())

    return reward


def first_eos_mask(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1.0 on every token up to and including the first EOS of each row, 0.0 after it."""
    is_eos = (tokens == eos_id).long()
    return ((is_eos.cumsum(1) - is_eos) == 0).float()


def sequence_logprobs(model, encoder_outputs, sequences: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Sum of log p(token) over each generated caption (rows start with the decoder start token)."""
    inputs, targets = sequences[:, :-1], sequences[:, 1:]
    logits = model(encoder_outputs=encoder_outputs, decoder_input_ids=inputs).logits
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * first_eos_mask(targets, eos_id)).sum(1)


def scst_loss(logprob_sums: torch.Tensor, rewards, baselines) -> torch.Tensor:
    """-mean((reward - baseline) * log p): the policy gradient with a baseline (the mean over every
    process's samples under several processes: distributed.global_mean)."""
    adv = torch.as_tensor(np.asarray(rewards) - np.asarray(baselines), dtype=logprob_sums.dtype,
                          device=logprob_sums.device)
    return global_mean(-(adv * logprob_sums).sum(), len(logprob_sums))


class RowSeededSampling:
    """A logits processor for `generate` that samples (temperature, then top-p) each row from its own random
    stream: row r's uniform draws come from a generator seeded with seeds[r]. A sampled caption then
    depends on its image's seed only, not on which images share its batch or its process, so N
    processes draw the samples one process would. It returns scores that allow only the drawn token,
    which generate's own sampling then takes."""

    def __init__(self, seeds, top_p: float, temperature: float, max_new_tokens: int, device):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.uniform = torch.stack([torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(int(s)),
                                               dtype=torch.float64) for s in seeds]).to(device)
        self.warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
        self.step = 0

    def __call__(self, input_ids, scores):
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        cdf = torch.softmax(scores.double(), -1).cumsum(-1)
        u = (self.uniform[:, self.step].clamp(min=1e-12) * cdf[:, -1]).unsqueeze(1)
        picked = torch.searchsorted(cdf, u).clamp(max=scores.shape[-1] - 1)  # a token with probability > 0
        self.step += 1
        return torch.full_like(scores, float("-inf")).scatter_(1, picked, 0.0)


def row_seeds(image_seeds, k: int) -> list[int]:
    """One seed per sampled row (k rows per image, grouped by image) from each image's seed (an int or a
    tuple of ints such as (run seed, epoch, image index))."""
    out = []
    for s in image_seeds:
        entropy = [int(x) for x in (s if isinstance(s, (tuple, list)) else (s,))]
        out.extend(int(np.random.SeedSequence([*entropy, j]).generate_state(1, np.uint64)[0] >> 1) for j in range(k))
    return out


def leave_one_out_mean(rewards: np.ndarray, k: int) -> np.ndarray:
    """Per sample, the mean reward of the other k-1 samples of the same image (rows grouped by image)."""
    r = np.asarray(rewards, dtype=float).reshape(-1, k)
    return ((r.sum(1, keepdims=True) - r) / max(1, k - 1)).reshape(-1)


@dataclass
class SCSTOutput:
    loss: torch.Tensor
    reward: float  # mean reward of the sampled captions
    baseline: float  # mean baseline
    reward_seconds: float  # time spent computing rewards
    samples: list  # the sampled captions, grouped by image


class _eval_mode:
    """Dropout off while decoding; every module's own train/eval flag restored afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for m, mode in self.modes:
            m.training = mode


def scst_step(model, encoder_outputs, references, tokenizer, reward_fn, k: int = 5, baseline: str = "greedy",
              top_p: float = 0.9, temperature: float = 1.0, max_new_tokens: int = 24, seeds=None,
              images=None) -> SCSTOutput:
    """The SCST loss of one batch (see the module docstring); `references[i]` lists image i's titles.

    `seeds[i]` seeds image i's samples (RowSeededSampling), e.g. (run seed, epoch, dataset index): the
    samples are then the same however the batch is split over processes; None draws them from torch's RNG.
    `images[i]` (for the CLIP rewards) is image i's position in the training split.
    Sampling and the log-probabilities that carry the gradient both run with dropout off: the gradient
    is that of the policy that drew the samples."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if baseline == "mean" and k < 2:
        raise ValueError("the mean baseline needs at least 2 samples per image")
    net = getattr(model, "module", model)
    eos = net.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    hidden = encoder_outputs.last_hidden_state

    def frozen():  # a fresh object per call: generate expands its encoder_outputs in place
        return BaseModelOutput(last_hidden_state=hidden.detach())

    if seeds is None:
        seeds = torch.randint(0, 2 ** 62, (len(hidden),)).tolist()
    sampler = RowSeededSampling(row_seeds(seeds, k), top_p, temperature, max_new_tokens, hidden.device)
    with torch.no_grad(), _eval_mode(net):
        sampled = net.generate(encoder_outputs=frozen(), do_sample=True, num_beams=1, top_p=1.0, top_k=0,
                               temperature=1.0, num_return_sequences=k, max_new_tokens=max_new_tokens,
                               logits_processor=LogitsProcessorList([sampler]))
        greedy = None
        if baseline == "greedy":
            greedy = net.generate(encoder_outputs=frozen(), do_sample=False, num_beams=1,
                                  max_new_tokens=max_new_tokens)
    refs_k = [r for r in references for _ in range(k)]
    extra = {} if images is None else {"images": [int(i) for i in images]}
    extra_k = {} if images is None else {"images": [int(i) for i in images for _ in range(k)]}
    t0 = time.perf_counter()  # reward time counts decoding the ids to text too
    samples = decode(tokenizer, sampled)
    rewards = reward_fn(samples, refs_k, **extra_k)
    if greedy is not None:
        base = np.repeat(reward_fn(decode(tokenizer, greedy), references, **extra), k)
    else:
        base = leave_one_out_mean(rewards, k)
    seconds = time.perf_counter() - t0
    repeated = BaseModelOutput(last_hidden_state=hidden.repeat_interleave(k, 0))  # rows grouped by image
    with _eval_mode(net):  # the same policy that sampled: dropout off, gradients on
        logp = sequence_logprobs(model, repeated, sampled, eos)
    return SCSTOutput(scst_loss(logp, rewards, base), float(np.mean(rewards)), float(np.mean(base)), seconds,
                      [samples[i:i + k] for i in range(0, len(samples), k)])
