"""Scores that judge meaning, not shared words: CLIPScore, RefCLIPScore (Hessel et al. 2021) and
BERTScore F1 (Zhang et al. 2020), each computed batched and once per process per model.

    clip = load_clip("openai/clip-vit-base-patch32")          # any CLIP (a hub id or a local folder)
    clip.scores(records, predictions, references)              # {"CLIPScore": [...], "RefCLIPScore": [...]}
    bert = load_bertscore("roberta-large")                     # layer 17, baseline rescaling, idf off
    bert.f1(predictions, references)                           # one F1 per prediction
    semantic_scores(predictions, references, records, ...)     # corpus means + how each was computed

CLIPScore(c, v) = 2.5 * max(cos(E_text("A photo depicts " + c), E_image(v)), 0).
RefCLIPScore = the harmonic mean of CLIPScore and max(max_r cos(E_text(c), E_text(r)), 0) over the
references r (prefixed the same way). Image embeddings go through the feature cache (the pixel cache
at CLIP's input size, then CLIP's image tower once per image and model, stored as float32): every
run that scores the same images reuses them. Images are resized to CLIP's square input, not
centre-cropped, so a title is judged on the whole picture.

BERTScore comes from the `bert-score` package: greedy matching of one layer's token embeddings, idf
off, F1 taken as the best over an image's references. Defaults follow the paper: roberta-large,
layer 17, scores rescaled with the package's baseline for that model (a local model folder may
carry its own baseline as `bertscore_baseline.tsv`, columns LAYER,P,R,F). Whether a score was
rescaled is stated next to it.

A model that cannot be loaded (offline and not in the Hugging Face cache, a typo) makes its scores
"skipped" with the reason: n-gram metrics never depend on these.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from .metrics import SEMANTIC_KEYS, evaluate_captions, text_scores

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_BERTSCORE = "roberta-large"
CLIP_PREFIX = "A photo depicts "  # Hessel et al. prefix every title (and reference) with this
CLIP_WEIGHT = 2.5
BASELINE_FILE = "bertscore_baseline.tsv"


class Skipped(Exception):
    """A score that cannot be computed here; the message says why."""


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _loadable(name: str) -> None:
    """Raise Skipped, with loading's one sentence, for a model folder that does not exist or a hub id
    that is not cached and cannot be downloaded (offline; unreachable hub)."""
    from .config import UserError
    from .loading import check_local_or_hub

    try:
        check_local_or_hub(name)
    except UserError as e:
        raise Skipped(str(e).rstrip(".")) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


def _not_loaded(name: str, e: Exception) -> Skipped:
    from .loading import load_error

    return Skipped(str(load_error(name, e)).rstrip("."))


# ----------------------------------------------------------------------------------------- CLIP
class ClipScorer:
    """A CLIP model and its processor; image embeddings through the feature cache."""

    def __init__(self, name: str, model, processor, tokenizer):
        import torch

        self.name, self.model, self.processor, self.tokenizer = name, model, processor, tokenizer
        self.device = next(model.parameters()).device
        self.max_length = min(int(getattr(tokenizer, "model_max_length", 77) or 77),
                              int(model.config.text_config.max_position_embeddings))

        class ImageTower(torch.nn.Module):  # feature_cache wants encoder(pixel_values=...).last_hidden_state
            def __init__(self, clip):
                super().__init__()
                self.clip = clip

            def forward(self, pixel_values):
                from transformers.modeling_outputs import BaseModelOutput

                emb = _pooled(self.clip.get_image_features(pixel_values=pixel_values))
                return BaseModelOutput(last_hidden_state=torch.nn.functional.normalize(emb.float(), dim=-1)[:, None])

        self.image_tower = ImageTower(model)
        self._key = None
        self._text: dict[str, np.ndarray] = {}

    def text_embeddings(self, texts, batch_size: int = 256) -> np.ndarray:
        """L2-normalised text embeddings [len(texts), D] of `CLIP_PREFIX + text`, batched; remembered by
        text (the references of every run, SCST's repeated samples), so each is embedded once."""
        import torch

        new = [t for t in dict.fromkeys(texts) if t not in self._text]
        if len(self._text) + len(new) > 200_000:
            self._text.clear()
            new = list(dict.fromkeys(texts))
        with torch.no_grad():
            for i in range(0, len(new), batch_size):
                part = new[i:i + batch_size]
                enc = self.tokenizer([CLIP_PREFIX + t for t in part], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                emb = _pooled(self.model.get_text_features(input_ids=enc["input_ids"],
                                                           attention_mask=enc["attention_mask"]))
                self._text.update(zip(part, torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()))
        return np.stack([self._text[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)

    def image_embeddings(self, records, cache_dir=None, workers: int = 0, batch_size: int = 64):
        """(L2-normalised embeddings [N, D] of the readable images, their positions in `records`);
        records whose path is None (image not found) are left out."""
        from .cache import encoder_fingerprint, feature_cache

        if self._key is None:
            self._key = encoder_fingerprint(self.model)
        positions = [i for i, r in enumerate(records) if r.path is not None]
        usable = [records[i] for i in positions]
        if not usable:
            return np.zeros((0, 0), np.float32), []
        arr, kept, _ = feature_cache(usable, self.processor, self.image_tower, cache_dir, workers, batch_size,
                                     desc=f"CLIP images ({Path(self.name).name})", dtype="float32",
                                     encoder_key="clip-" + self._key)
        where, j = [], 0  # kept is an ordered subsequence of usable (the readable images)
        for r in kept:
            while usable[j] is not r:
                j += 1
            where.append(positions[j])
            j += 1
        return np.asarray(arr[:, 0], dtype=np.float32), where

    def scores(self, records, predictions, references=None, cache_dir=None, workers: int = 0) -> dict:
        """Per-image CLIPScore (and RefCLIPScore given references) for the readable images: {"kept":
        positions, "CLIPScore": array, "RefCLIPScore": array or None}."""
        images, kept = self.image_embeddings(records, cache_dir, workers)
        preds = [predictions[i] for i in kept]
        text = self.text_embeddings(preds)
        clip = CLIP_WEIGHT * np.clip((text * images).sum(1), 0, None) if kept else np.zeros(0)
        out = {"kept": kept, "CLIPScore": clip, "RefCLIPScore": None}
        if references is not None:
            refs = [_as_list(references[i]) for i in kept]
            flat = self.text_embeddings([r for rs in refs for r in rs])
            best, start = [], 0
            for t, rs in zip(text, refs):
                best.append(max(0.0, float((flat[start:start + len(rs)] @ t).max())))
                start += len(rs)
            out["RefCLIPScore"] = harmonic_mean(clip, np.asarray(best))
        return out


def harmonic_mean(a, b) -> np.ndarray:
    """2ab / (a + b), and 0 where both are 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    total = a + b
    return np.divide(2 * a * b, total, out=np.zeros_like(total), where=total > 0)


def _pooled(out):
    """get_*_features returns a tensor in transformers 4 and an output object in 5 (.pooler_output)."""
    return getattr(out, "pooler_output", out)


def _as_list(r) -> list[str]:
    return [r] if isinstance(r, str) else [x for x in r] or [""]


@lru_cache(maxsize=2)
def load_clip(name: str = DEFAULT_CLIP, token: str | None = None) -> ClipScorer:
    """A ClipScorer for `name` (hub id or folder), on the GPU if there is one. Raises Skipped."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from .loading import load_errors

    _loadable(name)
    try:
        model = AutoModel.from_pretrained(name, token=token)
        processor = AutoImageProcessor.from_pretrained(name, token=token, backend="pil")
        tokenizer = AutoTokenizer.from_pretrained(name, token=token)
    except load_errors() as e:
        raise _not_loaded(name, e) from None
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise Skipped(f"{name} is a {model.config.model_type!r} model, not a CLIP-style image-text model")
    return ClipScorer(name, model.eval().to(_device()), processor, tokenizer)


# ------------------------------------------------------------------------------------ BERTScore
class BertScorer:
    """bert_score.BERTScorer with the choices stated: model, layer, idf off, rescaled or not."""

    def __init__(self, name: str, layer: int = 0, rescale: bool = True, batch_size: int = 64):
        import bert_score
        from bert_score.utils import model2layers

        from .loading import load_errors

        local = Path(name).is_dir()
        if layer <= 0:
            if name in model2layers:
                layer = model2layers[name]
            elif local:
                from transformers import AutoConfig

                layer = int(AutoConfig.from_pretrained(name).num_hidden_layers)
            else:
                raise Skipped(f"no recommended layer is known for {name}; pass --bertscore-layer")
        baseline = None
        if rescale:
            packaged = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{name}.tsv"
            own = Path(name) / BASELINE_FILE if local else None
            baseline = next((p for p in (own, packaged) if p is not None and p.is_file()), None)
        self.name, self.layer, self.rescaled = name, layer, baseline is not None
        self.why_not_rescaled = "" if baseline or not rescale else f"no baseline file for {name}"
        try:
            self.scorer = bert_score.BERTScorer(
                model_type=name, num_layers=layer, idf=False, batch_size=batch_size, lang="en",
                rescale_with_baseline=self.rescaled, baseline_path=str(baseline) if baseline else None,
                device=str(_device()))
        except load_errors() as e:
            raise _not_loaded(name, e) from None
        self.baseline_f = None
        if self.rescaled:  # read once here: bert-score loads it lazily into a read-only array (harmless warning)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self.baseline_f = float(self.scorer.baseline_vals[2])

    def describe(self) -> str:
        how = "rescaled with baseline" if self.rescaled else (
            f"not rescaled: {self.why_not_rescaled}" if self.why_not_rescaled else "not rescaled")
        return f"{self.name} layer {self.layer}, idf off, {how}"

    def f1(self, predictions, references) -> np.ndarray:
        """BERTScore F1 of each prediction: the best over its references. An empty title (or one without
        a reference) scores a raw 0, rescaled like any other, as bert-score itself does (its own path
        for empty titles fails under transformers 5)."""
        refs = [[r for r in _as_list(x) if r.strip()] for x in references]
        ok = [i for i, (p, rs) in enumerate(zip(predictions, refs, strict=True)) if p.strip() and rs]
        b = self.baseline_f
        zero = 0.0 if b is None else (0.0 - b) / (1.0 - b)
        out = np.full(len(predictions), zero, dtype=np.float64)
        if ok:
            _, _, f = self.scorer.score([predictions[i] for i in ok], [refs[i] for i in ok], verbose=False)
            out[ok] = f.numpy()
        return out


@lru_cache(maxsize=2)
def load_bertscore(name: str = DEFAULT_BERTSCORE, layer: int = 0, rescale: bool = True) -> BertScorer:
    """A BertScorer for `name` (hub id or local folder). Raises Skipped."""
    _loadable(name)  # before the slow import of bert_score (matplotlib, pandas)
    try:
        import bert_score  # noqa: F401
    except ImportError:
        raise Skipped("the bert-score package is not installed (pip install bert-score)") from None
    return BertScorer(name, layer, rescale)


# --------------------------------------------------------------------------------- one call for a run
def semantic_scores(predictions, references, records=None, clip_model: str = DEFAULT_CLIP,
                    bertscore_model: str = DEFAULT_BERTSCORE, bertscore_layer: int = 0, rescale: bool = True,
                    cache_dir=None, workers: int = 0, token: str | None = None) -> tuple[dict, dict]:
    """(scores, how): corpus means {"CLIPScore", "RefCLIPScore", "BERTScore"} (None when skipped) and,
    per score, the model and settings used or "skipped: <reason>". `records` (with .path) give the
    images; without them CLIPScore is skipped. An empty model name turns a score off."""
    predictions = list(predictions)
    scores = dict.fromkeys(SEMANTIC_KEYS)
    how = {}
    if not clip_model:
        how["CLIPScore"] = how["RefCLIPScore"] = "skipped: turned off (--clip-model '')"
    elif records is None:
        how["CLIPScore"] = how["RefCLIPScore"] = "skipped: no images to score against"
    else:
        try:
            out = load_clip(clip_model, token).scores(records, predictions, references, cache_dir, workers)
            if not out["kept"]:
                raise Skipped("none of the images could be read")
            scores["CLIPScore"] = float(out["CLIPScore"].mean())
            scores["RefCLIPScore"] = None if out["RefCLIPScore"] is None else float(out["RefCLIPScore"].mean())
            n = f"{len(out['kept'])} of {len(records)} images" if len(out["kept"]) < len(records) else \
                f"{len(records)} images"
            how["CLIPScore"] = f"{clip_model}, 2.5 * max(cos, 0), {n}"
            how["RefCLIPScore"] = f"{clip_model}, harmonic mean with the best reference's cosine, {n}"
        except Skipped as e:
            how["CLIPScore"] = how["RefCLIPScore"] = f"skipped: {e}"
        except Exception as e:  # an evaluation score must never fail a run
            how["CLIPScore"] = how["RefCLIPScore"] = f"skipped: {clip_model} failed ({_first_line(e)})"
    if not bertscore_model:
        how["BERTScore"] = "skipped: turned off (--bertscore-model '')"
    else:
        try:
            scorer = load_bertscore(bertscore_model, bertscore_layer, rescale)
            scores["BERTScore"] = float(scorer.f1(predictions, references).mean())
            how["BERTScore"] = "F1, " + scorer.describe()
        except Skipped as e:
            how["BERTScore"] = f"skipped: {e}"
        except Exception as e:
            how["BERTScore"] = f"skipped: {bertscore_model} failed ({_first_line(e)})"
    return scores, how


def options(cfg) -> dict:
    """semantic_scores' settings from a run config (RunConfig's fields)."""
    from .config import hf_token

    return dict(clip_model=cfg.clip_model, bertscore_model=cfg.bertscore_model,
                bertscore_layer=cfg.bertscore_layer, rescale=cfg.bertscore_rescale,
                cache_dir=cfg.cache_dir or None, workers=cfg.workers, token=hf_token(cfg.hf_token))


def evaluate_all(predictions, references, records=None, train_titles=None, **settings) -> tuple[dict, dict]:
    """Every score of a split: (scores, about). scores: the n-gram metrics (metrics.evaluate_captions),
    CLIPScore, RefCLIPScore, BERTScore (None when skipped) and the title figures (metrics.text_scores);
    about: {"scorers": how each model-based score was computed or why it was skipped,
    "seconds": time spent on the n-gram metrics and on the rest}. `settings` go to semantic_scores."""
    import time

    predictions, references = list(predictions), list(references)
    t0 = time.perf_counter()
    scores = evaluate_captions(predictions, references)
    t1 = time.perf_counter()
    sem, how = semantic_scores(predictions, references, records, **settings)
    scores.update(sem)
    scores.update(text_scores(predictions, references, train_titles))
    t2 = time.perf_counter()
    return scores, {"scorers": how, "seconds": {"n-gram metrics": round(t1 - t0, 3),
                                                "new metrics": round(t2 - t1, 3)}}
