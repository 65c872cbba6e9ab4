"""Corpus-level caption metrics through pycocoevalcap, exactly as the COCO caption evaluation.

    evaluate_captions(predictions, references) -> {"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    python -m captioning.metrics runs/X/predictions.csv

Both sides go through pycocoevalcap's PTBTokenizer (lower-case, punctuation stripped); CIDEr is
pycocoevalcap's CIDEr-D with document frequencies from the evaluated references. METEOR runs in
one long-lived Java process per Python process (starting it costs ~6 s).
"""
from __future__ import annotations

import atexit
import json
import sys
import threading

from .text import normalize

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
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
    # METEOR's Java side misreads an empty hypothesis; a lone space scores 0 all the same.
    res_m = {k: [v[0] if v[0].strip() else "."] for k, v in res.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)}
    out["METEOR"] = float(get_meteor().compute_score(gts, res_m)[0]) if meteor else float("nan")
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {k: out[k] for k in METRIC_KEYS}


def read_predictions(path):
    """(predictions, references) from a predictions.csv (columns prediction, reference[, references])."""
    from .config import UserError
    from .data import read_csv

    df = read_csv(path, required=("prediction", "reference"))
    if df.empty:
        raise UserError(f"{path} has no rows to score.")
    refs = []
    for row in df.to_dict("records"):
        extra = row.get("references") or ""
        try:
            more = json.loads(extra) if extra else []
        except json.JSONDecodeError:
            more = []
        refs.append([row["reference"]] + [m for m in more if isinstance(m, str) and m != row["reference"]])
    return df["prediction"].tolist(), refs


def format_table(rows: dict[str, dict]) -> str:
    """Markdown table: one row per name, one column per metric."""
    head = "| run | " + " | ".join(METRIC_KEYS) + " |\n|---|" + "---:|" * len(METRIC_KEYS) + "\n"
    body = "".join(f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in METRIC_KEYS) + " |\n"
                   for name, m in rows.items())
    return head + body


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m captioning.metrics",
                                description="Score a predictions.csv (columns prediction, reference).")
    p.add_argument("predictions", nargs="+", help="one or more predictions.csv files")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    results = {}
    for path in a.predictions:
        preds, refs = read_predictions(path)
        results[path] = evaluate_captions(preds, refs)
    print(json.dumps(results, indent=2) if a.json else format_table(results), end="")


if __name__ == "__main__":
    from .config import run_main

    run_main(main)
    sys.exit(0)
