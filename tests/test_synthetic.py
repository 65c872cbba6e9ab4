"""captioning.synthetic: deterministic, caption fixed by the picture, dirty entries present."""
import hashlib
import json

import numpy as np
import pandas as pd

from captioning import synthetic
from conftest import assert_clean_failure, run_cli


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, 1), (b, 1), (c, 2)):
        synthetic.make_dataset(d, n=30, seed=seed)
    assert digest(a) == digest(b) != digest(c)


def test_caption_vocabulary_and_variety(tmp_path):
    info = synthetic.make_dataset(tmp_path, n=300, seed=5, dirty=False)
    assert sum(info["splits"].values()) == 300
    titles = pd.concat(pd.read_csv(tmp_path / f"{s}_data.csv") for s in ("train", "valid", "test"))["Title"]
    foods = {f[0] for f in synthetic.FOODS} | {f[1] for f in synthetic.FOODS}
    for t in titles:
        words = t.split()
        assert any(w in foods for w in words) and any(w in synthetic.CONTAINER_COLOURS for w in words)
        assert ("Plate" in words) != ("Bowl" in words)
    assert len(set(titles)) > 150  # a real problem, not a handful of strings
    for count in synthetic.COUNTS:
        assert any(count in t.split() for t in titles)


def test_same_dish_same_caption():
    a = synthetic.draw_dish(np.random.default_rng(9))
    b = synthetic.draw_dish(np.random.default_rng(9))
    assert a[1] == b[1] and np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert synthetic.caption_for(0, 3, "plate", "Blue") == "Three Tomatoes on a Blue Plate"
    assert synthetic.caption_for(2, 2, "bowl", "White") == "A White Bowl of Two Olives"
    assert synthetic.caption_for(4, 1, "bowl", "Red") == "A Red Bowl of One Blueberry"


def test_dirty_entries_listed_and_present(tmp_path):
    info = synthetic.make_dataset(tmp_path, n=20, seed=0)
    reasons = {d["reason"] for d in info["dirty"]}
    assert reasons == {"text", "missing", "bad title", "corrupt", "blank", "duplicate"}
    assert json.loads((tmp_path / "dirty_entries.json").read_text()) == info["dirty"]
    assert not (tmp_path / "images" / "zz-missing-photo.jpg").exists()


def test_cli_with_models(tmp_path):
    p = run_cli("-m", "captioning.synthetic", "--out", tmp_path, "--n", "20", "--models")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "models" / "vit-gpt2" / "model.safetensors").exists()
    assert (tmp_path / "models" / "tokenizer" / "tokenizer.json").exists()
    bad = run_cli("-m", "captioning.synthetic", "--out", tmp_path / "x", "--n", "3")
    assert_clean_failure(bad, "at least 10")


def test_trained_tokenizers_give_the_same_ids_at_every_build():
    """The tokenizers library numbers a trained alphabet in hash order (and WordPiece breaks ties that way):
    the tiny CLIP, BERT and BLIP tokenizers must not change from one build to the next, or neither do the
    CLIPScore and BERTScore columns or the BLIP run."""
    from captioning.synthetic import all_captions, clip_tokenizer, word_piece

    texts = all_captions()
    clips = [clip_tokenizer(texts).get_vocab() for _ in range(4)]
    assert all(v == clips[0] for v in clips)
    pieces = [word_piece(texts, ["[PAD]", "[UNK]"], lowercase=True) for _ in range(4)]
    assert all(p.to_str() == pieces[0].to_str() for p in pieces)
    wp = pieces[0]
    assert wp.token_to_id("[PAD]") == 0 and wp.encode("Two Tomatoes on a plate").tokens == \
        ["two", "tomatoes", "on", "a", "plate"]
