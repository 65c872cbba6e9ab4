"""captioning.metrics equals a direct pycocoevalcap computation."""
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from captioning.metrics import METRIC_KEYS, evaluate_captions, get_meteor
from conftest import run_cli

PREDS = ["Two lemons on a black plate", "A red bowl of olives", "three eggs on a plate", "Grilled Salmon"]
REFS = ["Two Lemons on a Black Plate", ["A Red Bowl of Two Olives", "red bowl of olives"],
        "Three Eggs on a White Plate", "Honey-Glazed Salmon with Lemon"]


def test_equals_direct_pycocoevalcap():
    got = evaluate_captions(PREDS, REFS)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in ([r] if isinstance(r, str) else r)] for i, r in enumerate(REFS)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(PREDS)})
    bleu, _ = Bleu(4).compute_score(gts, res)
    m = get_meteor()  # pycocoevalcap's own Meteor object (starting a second JVM costs ~6 s)
    want = {"BLEU-1": bleu[0], "BLEU-2": bleu[1], "BLEU-3": bleu[2], "BLEU-4": bleu[3],
            "METEOR": m.compute_score(gts, res)[0], "ROUGE-L": Rouge().compute_score(gts, res)[0],
            "CIDEr": Cider().compute_score(gts, res)[0]}
    assert list(got) == list(METRIC_KEYS)
    for k in METRIC_KEYS:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


def test_perfect_and_wrong_and_multi_reference():
    perfect = evaluate_captions(["Two Lemons on a Plate", "A Bowl of Soup"], ["Two Lemons on a Plate", "A Bowl of Soup"])
    assert perfect["BLEU-1"] == pytest.approx(1.0) and perfect["ROUGE-L"] == pytest.approx(1.0)
    wrong = evaluate_captions(["zebra", "piano"], ["Two Lemons on a Plate", "A Bowl of Soup"])
    assert wrong["BLEU-1"] < 0.01 and wrong["CIDEr"] < 0.01
    one = evaluate_captions(["red bowl of olives"], ["A Red Bowl of Two Olives"])
    two = evaluate_captions(["red bowl of olives"], [["A Red Bowl of Two Olives", "red bowl of olives"]])
    assert two["BLEU-4"] > one["BLEU-4"]


def test_empty_prediction_and_separator_do_not_break_meteor():
    out = evaluate_captions(["", "a ||| b"], ["One Egg", "Two Eggs"])
    assert 0 <= out["METEOR"] < 0.5


def test_one_meteor_process():
    assert get_meteor() is get_meteor()


def test_mismatched_lengths():
    with pytest.raises(ValueError):
        evaluate_captions(["a"], ["a", "b"])


def test_cli(tmp_path):
    p = tmp_path / "predictions.csv"
    p.write_text("Image_Name,reference,prediction\na,Two Lemons on a Plate,Two Lemons on a Plate\n"
                 "b,A Bowl of Soup,A Bowl of Stew\n")
    proc = run_cli("-m", "captioning.metrics", p, "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    got = json.loads(proc.stdout)[str(p)]
    want = evaluate_captions(["Two Lemons on a Plate", "A Bowl of Stew"], ["Two Lemons on a Plate", "A Bowl of Soup"])
    assert {k: got[k] for k in METRIC_KEYS} == pytest.approx(want) and got["images"] == 2
    assert got["ExactMatch"] == 0.5 and got["Distinct"] == 1.0


def test_cli_on_captions_without_references(tmp_path, capsys):
    """A predictions.csv of new photos (inferllama --images) gets one sentence, not a pycocoevalcap
    traceback; rows without a reference are left out of a mixed file, and the table counts the rest."""
    from captioning.config import UserError
    from captioning.metrics import main

    p = tmp_path / "predictions.csv"
    p.write_text("Image_Name,reference,prediction\nIMG_1,,A Bowl of Soup\nIMG_2,,Two Eggs\n")
    with pytest.raises(UserError, match="no references"):
        main([str(p)])
    p.write_text("Image_Name,reference,prediction\nIMG_1,,A Bowl of Soup\nb,A Bowl of Soup,A Bowl of Soup\n")
    main([str(p)])
    out, err = capsys.readouterr()
    assert "left out 1 of 2" in err and "| images |" in out and f"| {p} | 1 | 1.0000 |" in out
