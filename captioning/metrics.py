"""Corpus-level caption metrics through pycocoevalcap, exactly as the COCO caption evaluation.

    evaluate_captions(predictions, references) -> {"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    python -m captioning.metrics runs/X/predictions.csv

Both sides go through pycocoevalcap's PTBTokenizer (lower-case, punctuation stripped); CIDEr is
pycocoevalcap's CIDEr-D with document frequencies from the evaluated references. METEOR runs in
one long-lived Java process per Python process (starting it costs ~6 s).

Collapse guard: caption_spread(predictions) gives the share of distinct captions and the most frequent
caption's share; collapse_warning says in words when one caption covers more than half of the images
(the failure users of captioning toolkits report most after running out of memory).

Per-caption rewards for SCST: CiderD (document frequencies fixed once from the training
references; equal to pycocoevalcap's CiderScorer given the same frequencies) and meteor_scores
(a whole batch per call to that Java process), both on fast_tokenize instead of the Java tokenizer.
"""
from __future__ import annotations

import atexit
import json
import math
import re
import sys
import threading
from collections import Counter

from .text import normalize

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
SEMANTIC_KEYS = ("CLIPScore", "RefCLIPScore", "BERTScore")  # captioning.semantic (models; may be skipped)
TEXT_KEYS = ("ExactMatch", "Copied", "Distinct", "TopShare", "Vocab", "Length", "RefLength")
ALL_KEYS = METRIC_KEYS + SEMANTIC_KEYS + TEXT_KEYS
# The columns of a compact table (the report's default; --all shows ALL_KEYS)
COMPACT_KEYS = ("BLEU-4", "METEOR", "CIDEr", "CLIPScore", "RefCLIPScore", "BERTScore", "ExactMatch", "Distinct")
_meteor = None
_meteor_lock = threading.Lock()


def get_meteor():
    """The process-wide METEOR scorer (a Java subprocess), started on first use."""
    global _meteor
    with _meteor_lock:
        if _meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            _meteor = Meteor()
            atexit.register(close_meteor)
        return _meteor


def close_meteor():
    global _meteor
    m, _meteor = _meteor, None
    if m is not None:
        try:
            with m.lock:
                m.meteor_p.stdin.close()
                m.meteor_p.kill()
                m.meteor_p.wait()
        except Exception:
            pass


def _clean(text: str) -> str:
    # '|||' is METEOR's field separator on its stdin protocol; newlines end a request.
    return normalize(text).replace("|", " ")


def as_reference_lists(references) -> list[list[str]]:
    out = []
    for r in references:
        refs = [r] if isinstance(r, str) else list(r)
        refs = [_clean(x) for x in refs if _clean(x)]
        out.append(refs or [""])
    return out


def tokenize(predictions, references):
    """PTB-tokenize both sides; returns (gts, res) dicts keyed by position, pycocoevalcap style."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = as_reference_lists(references)
    gts = {i: [{"caption": c} for c in rs] for i, rs in enumerate(refs)}
    res = {i: [{"caption": _clean(p)}] for i, p in enumerate(predictions)}
    tok = PTBTokenizer()
    with _quiet_stderr():  # the Java tokenizer reports its speed on stderr at every call
        return tok.tokenize(gts), tok.tokenize(res)


class _quiet_stderr:
    def __enter__(self):
        import os

        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        import os

        os.dup2(self.saved, 2)
        os.close(self.saved)


def evaluate_captions(predictions, references, meteor: bool = True) -> dict:
    """Corpus BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) of `predictions` against `references`.

    references[i] is a string or a list of valid captions for prediction i.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no captions to score")
    gts, res = tokenize(predictions, references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)}
    # an empty caption goes to METEOR as it is, exactly as pycocoevalcap sends it (it scores 0 and
    # counts in the corpus statistics; any stand-in such as "." would change the corpus score)
    out["METEOR"] = float(get_meteor().compute_score(gts, res)[0]) if meteor else float("nan")
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {k: out[k] for k in METRIC_KEYS}


# One caption on more than this share of the images: the run has collapsed (COLLAPSE_SHARE).
COLLAPSE_SHARE = 0.5


def caption_spread(predictions) -> dict:
    """How varied a split's captions are: {"distinct_share": distinct captions / captions,
    "top_share": the most frequent caption's share, "top_caption": that caption,
    "collapsed": top_share > COLLAPSE_SHARE}. Captions are compared after text.normalize, ignoring case."""
    captions = [normalize(p).lower() for p in predictions]
    if not captions:
        return {"distinct_share": 0.0, "top_share": 0.0, "top_caption": "", "collapsed": False}
    top, count = Counter(captions).most_common(1)[0]
    share = count / len(captions)
    return {"distinct_share": len(set(captions)) / len(captions), "top_share": share, "top_caption": top,
            "collapsed": share > COLLAPSE_SHARE}


def collapse_warning(spread: dict, where: str = "images") -> str | None:
    """One sentence when a caption covers more than half of the images (see caption_spread), else None."""
    if not spread.get("collapsed"):
        return None
    return (f"warning: the same caption {spread['top_caption']!r} is given to {spread['top_share']:.0%} of the "
            f"{where} ({spread['distinct_share']:.0%} of the captions are distinct): the model has collapsed to "
            "one caption; check the learning rate, the labels and the data before trusting its scores.")


def read_predictions(path, with_names: bool = False):
    """(predictions, references) from a predictions.csv (columns prediction, reference[, references]);
    with_names: also the rows' Image_Name (None where the file has no such column)."""
    from .config import UserError
    from .data import read_csv

    df = read_csv(path, required=("prediction", "reference"))
    if df.empty:
        raise UserError(f"{path} has no rows to score.")
    preds, refs, names, blank = [], [], [], 0
    for row in df.to_dict("records"):
        extra = row.get("references") or ""
        try:
            more = json.loads(extra) if extra else []
        except json.JSONDecodeError:
            more = []
        these = [r for r in [row["reference"], *more] if isinstance(r, str) and normalize(r)]
        if not these:  # a photo captioned from a folder has no reference: nothing to score it against
            blank += 1
            continue
        preds.append(row["prediction"])
        refs.append(list(dict.fromkeys(these)))
        names.append(row.get("Image_Name"))
    if not refs:
        raise UserError(f"{path} has no references (captions of new photos, e.g. from inferllama --images): "
                        "there is nothing to score them against.")
    if blank:
        print(f"warning: {path}: left out {blank} of {len(df)} row(s) without a reference.", file=sys.stderr)
    return (preds, refs, names) if with_names else (preds, refs)


# ------------------------------------------------------------------- per-caption rewards (SCST)
# pycocoevalcap drops these PTB tokens (its "-LRB-" etc. never match: the tokenizer lower-cases first)
_PUNCT_TOKENS = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"'}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_WORDS = re.compile(r"[^\W_]+(?:['.-][^\W_]+)*|[^\w\s]|_+")
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")


def fast_tokenize(text: str) -> str:
    """A pure-Python stand-in for the PTB tokenization of the evaluation (lower case, "mom 's",
    "do n't", brackets as -lrb-/-rrb-, punctuation dropped), fast enough for every SCST sample."""
    out = []
    for t in _WORDS.findall(normalize(text).lower()):
        m = _CLITIC.match(t)
        for part in m.groups() if m else (t,):
            if part not in _PUNCT_TOKENS:
                out.append(_BRACKETS.get(part, part))
    return " ".join(out)


def _ngram_counts(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CiderD:
    """CIDEr-D of single captions, with document frequencies computed once from a reference corpus.

    scorer = CiderD(train_references)        # list of reference lists, one per training image
    scorer.scores(captions, references)      # numpy array, one CIDEr-D per caption
    Same arithmetic as pycocoevalcap's CiderScorer (tf-idf n-gram vectors n=1..4, clipped cosine,
    Gaussian length penalty sigma=6, x10) but idf = log(#corpus images) - log(df) comes from the
    corpus given here, not from the captions being scored, so a reward does not depend on its batch.
    Inputs go through `tokenize` (default fast_tokenize; pass None for already tokenized text).
    Vectors are cached by text, so repeated references and repeated samples cost nothing.
    """

    def __init__(self, corpus_references, n: int = 4, sigma: float = 6.0, tokenize=fast_tokenize):
        self.n, self.sigma, self.tokenize = n, sigma, tokenize or (lambda s: s)
        corpus = as_reference_lists(corpus_references) if tokenize else [list(r) for r in corpus_references]
        if not corpus:
            raise ValueError("CiderD needs at least one reference list to compute document frequencies")
        self.document_frequency = Counter()
        for refs in corpus:
            grams = set()
            for r in refs:
                grams.update(_ngram_counts(self.tokenize(r).split(), n))
            self.document_frequency.update(grams)
        self.log_corpus = math.log(float(len(corpus)))
        self._cache: dict[str, tuple] = {}

    def _vector(self, text: str):
        """(tf-idf weights per n-gram, norms per order, length) of one tokenised caption."""
        counts = _ngram_counts(text.split(), self.n)
        vec, norm2, length = {}, [0.0] * self.n, 0
        for gram, tf in counts.items():
            w = float(tf) * (self.log_corpus - math.log(max(1.0, self.document_frequency.get(gram, 0.0))))
            vec[gram] = w
            norm2[len(gram) - 1] += w * w
            if len(gram) == 2:  # pycocoevalcap counts length in bigrams; kept for equality
                length += tf
        return vec, [math.sqrt(x) for x in norm2], length

    def _cached_vector(self, text: str):
        v = self._cache.get(text)
        if v is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            v = self._cache[text] = self._vector(self.tokenize(text))
        return v

    def score(self, caption: str, references) -> float:
        hyp, hyp_norm, hyp_len = self._cached_vector(caption)
        refs = [references] if isinstance(references, str) else list(references)
        total = 0.0
        for ref in refs:
            ref_vec, ref_norm, ref_len = self._cached_vector(ref)
            penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * self.sigma ** 2))
            val = [0.0] * self.n
            for gram, w in hyp.items():
                r = ref_vec.get(gram)
                if r:
                    val[len(gram) - 1] += min(w, r) * r
            total += sum(v / (hyp_norm[k] * ref_norm[k]) if hyp_norm[k] and ref_norm[k] else v
                         for k, v in enumerate(val)) * penalty / self.n
        return 10.0 * total / max(1, len(refs))

    def scores(self, captions, references):
        import numpy as np

        return np.array([self.score(c, r) for c, r in zip(captions, references, strict=True)])


def meteor_scores(captions, references, chunk: int = 256) -> list[float]:
    """Per-caption METEOR from the process-wide Java scorer (get_meteor), a whole batch per call.

    pycocoevalcap's Meteor.compute_score waits for each caption's statistics before sending the
    next; here a chunk of SCORE lines goes out at once and the answers are read back together.
    """
    captions, refs = list(captions), as_reference_lists(references)
    if len(captions) != len(refs):
        raise ValueError(f"{len(captions)} captions but {len(refs)} reference lists")
    if not captions:
        return []
    hyps = [fast_tokenize(_clean(c)) or "." for c in captions]  # an empty hypothesis confuses the Java side
    lines = [" ||| ".join(("SCORE", *(fast_tokenize(r) or "." for r in rs), h)) for h, rs in zip(hyps, refs)]
    unique = list(dict.fromkeys(lines))  # SCST samples repeat: score each distinct pair once
    m = get_meteor()
    with m.lock:
        proc, stats = m.meteor_p, []
        for start in range(0, len(unique), chunk):
            part = unique[start:start + chunk]
            proc.stdin.write("".join(x + "\n" for x in part).encode())
            proc.stdin.flush()
            stats.extend(proc.stdout.readline().decode().strip() for _ in part)
        proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
        proc.stdin.flush()
        score = {line: float(proc.stdout.readline().strip()) for line in unique}
        proc.stdout.readline()  # the corpus score, unused here
    return [score[line] for line in lines]


# ---------------------------------------------------------- title-level figures (no model needed)


def comparable(text) -> str:
    """A title as exact match and novelty compare it: lower case, PTB tokens, punctuation dropped
    (fast_tokenize), so "Two Lemons, on a plate." equals "two lemons on a plate"."""
    return fast_tokenize(_clean(text))


def exact_match(predictions, references) -> float:
    """Share of predictions equal, after `comparable`, to one of their references."""
    refs = as_reference_lists(references)
    if len(refs) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(refs)} references")
    hits = [comparable(p) in {comparable(r) for r in rs} for p, rs in zip(predictions, refs)]
    return sum(hits) / max(1, len(hits))


def copied_share(predictions, train_titles) -> float:
    """Share of predictions that repeat a training title verbatim (after `comparable`); 1 - this is
    the novelty of the titles."""
    seen = {comparable(t) for t in train_titles}
    return sum(comparable(p) in seen for p in predictions) / max(1, len(predictions))


def diversity(predictions, references=None) -> dict:
    """How varied the titles are: Distinct and TopShare (caption_spread's share of distinct titles and
    the most frequent title's share: near 1 when a model collapses onto one title), Vocab (distinct
    words used), Length (mean words per title) and, given references, RefLength (theirs)."""
    spread = caption_spread(predictions)
    words = [comparable(p).split() for p in predictions]
    out = {"Distinct": spread["distinct_share"], "TopShare": spread["top_share"],
           "Vocab": len({w for ws in words for w in ws}), "Length": sum(map(len, words)) / max(1, len(words))}
    if references is not None:
        ref_words = [len(comparable(r).split()) for rs in as_reference_lists(references) for r in rs]
        out["RefLength"] = sum(ref_words) / max(1, len(ref_words))
    return out


def text_scores(predictions, references, train_titles=None) -> dict:
    """ExactMatch, Copied (None without training titles) and the diversity figures."""
    predictions = list(predictions)
    copied = None if train_titles is None else copied_share(predictions, train_titles)
    return {"ExactMatch": exact_match(predictions, references), "Copied": copied,
            **diversity(predictions, references)}


def format_table(rows: dict[str, dict], keys=COMPACT_KEYS) -> str:
    """Markdown table: one row per name, the number of images scored, one column per metric in `keys`
    ("-" where a score is missing or was skipped)."""
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v) if isinstance(v, int) else "-"

    head = "| run | images | " + " | ".join(keys) + " |\n|---|---:|" + "---:|" * len(keys) + "\n"
    body = "".join(f"| {name} | {m.get('images', '?')} | " + " | ".join(cell(m.get(k)) for k in keys) + " |\n"
                   for name, m in rows.items())
    return head + body


def _run_settings(path) -> dict:
    """config.json of the run folder holding `path`, or {}."""
    from pathlib import Path

    try:
        cfg = json.loads((Path(path).parent / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _images_and_titles(path, names, images_dir: str, train_csv: str):
    """(records of the rows' images or None, training titles or None): the images (`names`) from
    --images-dir, else the run's own (config.json); the titles from --train-csv, else the run's
    train_data.csv."""
    from pathlib import Path

    from .config import UserError
    from .data import Record, read_csv, resolve_image, run_folders

    run = _run_settings(path)
    run_data, run_images = run_folders(run)  # --data-dir/--images-dir of the run, or its --dataset layout
    folder = images_dir or str(run_images or "")
    records = None
    if folder and Path(folder).is_dir() and None not in names:
        records = [Record(n, "", resolve_image(folder, n)) for n in names]
        missing = sum(r.path is None for r in records)
        if missing:  # CLIPScore scores the others
            print(f"warning: {missing} of {len(records)} images of {path} are not in {folder}.", file=sys.stderr)
    elif images_dir:
        raise UserError(f"images folder {images_dir} does not exist.")
    train = train_csv or (str(run_data / "train_data.csv") if run_data else "")
    titles = None
    if train:
        try:
            titles = [normalize(t) for t in read_csv(train)["Title"]]
        except UserError:
            if train_csv:
                raise
    return records, titles


def main(argv=None):
    import argparse

    from .semantic import DEFAULT_BERTSCORE, DEFAULT_CLIP, evaluate_all

    p = argparse.ArgumentParser(prog="python -m captioning.metrics",
                                description="Score a predictions.csv (columns prediction, reference; Image_Name "
                                            "for CLIPScore): n-gram metrics, CLIPScore, RefCLIPScore, BERTScore, "
                                            "exact match, novelty, diversity.")
    p.add_argument("predictions", nargs="+", help="one or more predictions.csv files")
    p.add_argument("--json", action="store_true", help="print JSON (every score and how it was computed)")
    p.add_argument("--all", action="store_true", help="every column in the table (default: a compact set)")
    p.add_argument("--images-dir", default="", help="the images (default: the run's, from its config.json)")
    p.add_argument("--train-csv", default="",
                   help="training titles for the novelty figure (default: the run's train_data.csv)")
    p.add_argument("--clip-model", default=DEFAULT_CLIP, help="CLIP for CLIPScore ('' = none; default %(default)s)")
    p.add_argument("--bertscore-model", default=DEFAULT_BERTSCORE,
                   help="model for BERTScore ('' = none; default %(default)s)")
    p.add_argument("--bertscore-layer", type=int, default=0, help="its layer (0 = the recommended one)")
    p.add_argument("--no-bertscore-rescale", dest="rescale", action="store_false",
                   help="report BERTScore without baseline rescaling")
    p.add_argument("--cache-dir", default="", help="cache folder for CLIP image embeddings")
    a = p.parse_args(argv)
    results, about = {}, {}
    for path in a.predictions:
        preds, refs, names = read_predictions(path, with_names=True)
        records, titles = _images_and_titles(path, names, a.images_dir, a.train_csv)
        scores, about[path] = evaluate_all(
            preds, refs, records, titles, clip_model=a.clip_model, bertscore_model=a.bertscore_model,
            bertscore_layer=a.bertscore_layer, rescale=a.rescale, cache_dir=a.cache_dir or None)
        results[path] = {**scores, "images": len(preds)}
    if a.json:
        print(json.dumps({path: {**results[path], "info": about[path]} for path in results}, indent=2))
        return
    print(format_table(results, ALL_KEYS if a.all else COMPACT_KEYS), end="")
    for path, info in about.items():
        for key, how in info["scorers"].items():
            print(f"{key}: {how}" + (f" ({path})" if len(about) > 1 else ""))


if __name__ == "__main__":
    from .config import run_main

    run_main(main)
    sys.exit(0)
