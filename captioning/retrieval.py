"""Retrieval baselines: what a captioner adds over copying the titles of similar training photos.

    nearest    the title of the most similar training image: cosine similarity of a frozen image
               encoder's mean-pooled features (from the feature cache)
    consensus  (Devlin et al. 2015, "Exploring nearest neighbor approaches for image captioning"): among
               the titles of the k nearest training images, the one with the highest mean CIDEr-D
               against the other k - 1; k is chosen on the validation split
    constant   one training title for every image: of the most frequent training titles, the one with
               the best mean CIDEr-D on the validation split

A baselines run saves its training bank (unit vectors and titles) in best/ with retrieval.json, so
load_captioner(run) titles new photos the same way (RetrievalCaptioner).

Only training titles are ever returned; validation titles choose k and the constant title; test titles
are read only by the scoring. A training image never answers for itself: a query whose image name is
also in the training split (a leaked duplicate) skips that entry.
CIDEr-D here is the per-caption scorer of captioning.metrics (document frequencies from the training
titles), fast enough to compare thousands of candidates; reported scores are the usual corpus metrics.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .captioner import Caption, Captioner, default_device, write_manifest
from .config import UserError
from .metrics import CiderD

SETTINGS_FILE = "retrieval.json"

METHODS = ("nearest", "consensus", "constant")


def embed(features) -> torch.Tensor:
    """[N, tokens, dim] encoder outputs -> [N, dim] unit vectors (mean over tokens)."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    x = x.mean(1) if x.dim() == 3 else x
    return torch.nn.functional.normalize(x, dim=-1)


def neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int, query_names=None, bank_names=None,
               chunk: int = 1024) -> torch.Tensor:
    """Indices [Q, k] of the k most similar bank entries per query (cosine of unit vectors), best first.
    An entry with the query's own image name is never returned."""
    k = min(k, len(bank) - (1 if query_names is not None else 0))
    index = {n: i for i, n in enumerate(bank_names or [])}
    out = []
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ bank.T
        if query_names is not None:
            for row, name in enumerate(query_names[start:start + chunk]):
                if name in index:
                    sims[row, index[name]] = -float("inf")
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out) if out else torch.zeros((0, k), dtype=torch.long)


def consensus_pick(candidates: list[str], scorer: CiderD) -> str:
    """The candidate with the highest mean CIDEr-D against the other candidates."""
    if len(candidates) == 1:
        return candidates[0]
    best, best_score = candidates[0], -1.0
    for i, c in enumerate(candidates):
        others = candidates[:i] + candidates[i + 1:]
        s = scorer.score(c, others)
        if s > best_score:
            best, best_score = c, s
    return best


class Retrieval:
    """The three baselines over one training bank (unit feature vectors, titles, image names)."""

    def __init__(self, bank: torch.Tensor, titles: list[str], names: list[str]):
        self.bank, self.titles, self.names = bank, list(titles), list(names)
        self.scorer = CiderD([[t] for t in self.titles])

    def nearest(self, queries, query_names) -> list[str]:
        idx = neighbours(queries, self.bank, 1, query_names, self.names)
        return [self.titles[int(i)] for i in idx[:, 0]]

    def consensus(self, queries, query_names, k: int) -> list[str]:
        idx = neighbours(queries, self.bank, k, query_names, self.names)
        return [consensus_pick([self.titles[int(i)] for i in row], self.scorer) for row in idx]

    def choose_k(self, queries, query_names, references, ks=(3, 5, 10, 20)) -> tuple[int, dict]:
        """The k whose consensus titles score the best mean CIDEr-D on (validation) references."""
        scores = {}
        for k in ks:
            if k > len(self.bank) - 1:
                continue
            preds = self.consensus(queries, query_names, k)
            scores[k] = float(self.scorer.scores(preds, references).mean())
        best = max(scores, key=scores.get) if scores else 1
        return best, scores

    def constant(self, references, candidates: int = 200) -> tuple[str, float]:
        """Of the `candidates` most frequent training titles, the one with the best mean CIDEr-D against
        `references` (the validation titles)."""
        shortlist = [t for t, _ in Counter(self.titles).most_common(candidates)]
        scored = [(float(self.scorer.scores([t] * len(references), references).mean()), t) for t in shortlist]
        score, title = max(scored)
        return title, score

    def titles_for(self, queries, names, settings: dict) -> list[str]:
        """The titles of one method (settings: method, k, title) for a batch of query vectors."""
        if settings["method"] == "nearest":
            return self.nearest(queries, names)
        if settings["method"] == "consensus":
            return self.consensus(queries, names, int(settings["k"]))
        return [settings["title"]] * len(queries)

    def save(self, folder, **settings) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"vectors": self.bank.contiguous()}, folder / "bank.safetensors")
        (folder / "titles.json").write_text(json.dumps({"titles": self.titles, "names": self.names}))
        (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        write_manifest(folder, RetrievalCaptioner.family, **settings)


class RetrievalCaptioner(Captioner):
    """The captioner interface over a saved baseline (a task1/baselines.py run or its best/): the frozen
    encoder's features of each photo (rounded to float16 as the feature cache stores them), then the
    run's method over its training bank."""

    family = "retrieval"
    default_preset = "greedy"  # nothing is decoded; kept for the interface

    def __init__(self, retrieval: Retrieval, encoder, processor, source, settings: dict):
        super().__init__(source, settings)
        self.retrieval, self.encoder, self.processor = retrieval, encoder, processor

    @classmethod
    def load(cls, source, token=None, device=None, settings=None):
        from safetensors.torch import load_file

        from .prefix_llm import load_vision

        folder = Path(source)
        try:
            saved = json.loads((folder / SETTINGS_FILE).read_text())
            names = json.loads((folder / "titles.json").read_text())
            bank = load_file(folder / "bank.safetensors")["vectors"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"the retrieval baseline in {folder} is incomplete or damaged ({type(e).__name__}).") from None
        encoder, processor = load_vision(saved["encoder"], token)
        return cls(Retrieval(bank, names["titles"], names["names"]), encoder.to(default_device(device)), processor,
                   source, {**saved, **(settings or {})})

    def describe(self) -> dict:
        return {**super().describe(), "method": self.settings.get("method"), "encoder": self.settings.get("encoder"),
                "bank": len(self.retrieval.titles)}

    @torch.no_grad()
    def caption(self, images, preset=None, top_k=0, max_new_tokens=None) -> list[Caption]:
        from .imaging import pixel_batch, pixel_normalizer

        images = list(images)
        if not images:
            return []
        pixels = pixel_normalizer(self.processor)(pixel_batch(images, self.processor).to(next(self.encoder.parameters()).device))
        feats = self.encoder(pixel_values=pixels).last_hidden_state.to(torch.float16).cpu()
        return [Caption(t) for t in self.retrieval.titles_for(embed(feats), None, self.settings)]
