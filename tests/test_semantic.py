"""Scores beyond n-grams: exact match, novelty, diversity; CLIPScore, RefCLIPScore and BERTScore
against direct computations on tiny models."""
import pytest

from captioning.metrics import comparable, copied_share, diversity, exact_match, text_scores


def test_exact_match_ignores_case_punctuation_and_takes_any_reference():
    preds = ["Two Lemons, on a plate.", "A Red Bowl of Olives", "Fried Tofu with Pepper", ""]
    refs = ["two lemons on a plate", ["A Red Bowl of Two Olives", "a red bowl of olives"],
            "Crispy Salt and Pepper Tofu", "One Egg"]
    assert comparable("Two Lemons, on a plate.") == "two lemons on a plate"
    assert exact_match(preds, refs) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        exact_match(preds, refs[:2])


def test_copied_share_counts_titles_repeated_from_training():
    train = ["Two Lemons on a Plate", "A Bowl of Soup"]
    assert copied_share(["two lemons on a plate!", "A Bowl of Stew", "a bowl of soup"], train) == pytest.approx(2 / 3)
    assert copied_share(["anything"], []) == 0.0


def test_diversity_shows_a_collapsed_model():
    refs = ["One Egg on a Red Plate", "Two Limes in a Bowl", "Three Olives", "A Plate of Four Cookies"]
    varied = diversity(["One Egg", "Two Limes in a Bowl", "Three Olives on a Plate", "Cookies"], refs)
    collapsed = diversity(["A Plate", "A Plate", "a plate", "A Bowl"], refs)
    assert varied["Distinct"] == 1.0 and varied["TopShare"] == 0.25
    assert collapsed["Distinct"] == 0.5 and collapsed["TopShare"] == 0.75
    assert collapsed["Vocab"] == 3 and varied["Vocab"] > collapsed["Vocab"]
    assert collapsed["Length"] == 2.0 and varied["RefLength"] == pytest.approx((6 + 5 + 2 + 5) / 4)


def test_text_scores_without_training_titles_leave_copied_out():
    out = text_scores(["a b"], ["a b"])
    assert out["ExactMatch"] == 1.0 and out["Copied"] is None
    assert text_scores(["a b"], ["a b"], ["A B"])["Copied"] == 1.0


# ------------------------------------------------------------------ model-based scores, tiny models
@pytest.fixture(scope="module")
def tiny(synth, one_thread):
    """24 drawn dishes of the synthetic data, their titles, and the tiny CLIP and BERT of `synth`."""
    from captioning.data import load_split

    records, _ = load_split(synth, "train")
    records = [r for r in records if r.image_name.startswith("dish-")][:24]  # not the dirty entries
    return {"records": records, "titles": [r.title for r in records],
            "clip": str(synth / "models" / "clip"), "bert": str(synth / "models" / "bert")}


def direct_clip(path, images, captions, references):
    """CLIPScore and RefCLIPScore per image by their definitions, straight from transformers."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from captioning.data import load_image

    model, tok = CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    proc = AutoImageProcessor.from_pretrained(path, backend="pil")

    def text(t):
        ids = tok(["A photo depicts " + x for x in t], padding=True, return_tensors="pt")
        return torch.nn.functional.normalize(model.get_text_features(**ids).pooler_output, dim=-1)

    with torch.no_grad():
        img = model.get_image_features(**proc([load_image(p) for p in images], return_tensors="pt")).pooler_output
        img = torch.nn.functional.normalize(img, dim=-1)
        cand, refs = text(captions), text(references)
    clip = 2.5 * (cand * img).sum(1).clamp(min=0)
    ref = (cand * refs).sum(1).clamp(min=0)  # one reference per image here
    both = clip + ref
    return clip.numpy(), torch.where(both > 0, 2 * clip * ref / both.clamp(min=1e-12), 0.0).numpy()


def test_clipscore_and_refclipscore_follow_their_definitions(tiny):
    from captioning.semantic import load_clip, semantic_scores

    titles = tiny["titles"]
    preds = titles[:12] + titles[13:] + titles[:1]  # right titles for half of the images
    out = load_clip(tiny["clip"]).scores(tiny["records"], preds, titles)
    want_clip, want_ref = direct_clip(tiny["clip"], [r.path for r in tiny["records"]], preds, titles)
    assert out["kept"] == list(range(24))
    assert out["CLIPScore"] == pytest.approx(want_clip, abs=2e-3)
    assert out["RefCLIPScore"] == pytest.approx(want_ref, abs=2e-3)
    scores, how = semantic_scores(preds, titles, tiny["records"], tiny["clip"], "")
    assert scores["CLIPScore"] == pytest.approx(want_clip.mean(), abs=1e-3)
    assert "2.5 * max(cos, 0), 24 images" in how["CLIPScore"] and how["BERTScore"].startswith("skipped")


def direct_bertscore(path, candidates, references, layer):
    """BERTScore F1 by greedy matching of one layer's normalised token embeddings (specials matchable,
    weighted 0; idf off), best over references, rescaled with the folder's baseline."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model, tok = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    base = [line.split(",") for line in (Path(path) / "bertscore_baseline.tsv").read_text().split()[1:]]
    b = float(base[layer][3])

    def states(s):
        enc = tok(s, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc, output_hidden_states=True).hidden_states[layer][0]
        ids = enc["input_ids"][0]
        weight = ((ids != tok.cls_token_id) & (ids != tok.sep_token_id)).float()
        return torch.nn.functional.normalize(h, dim=-1), weight / weight.sum()

    out = []
    for c, refs in zip(candidates, references):
        best = -1.0
        for r in refs:
            (hc, wc), (hr, wr) = states(c), states(r)
            sim = hc @ hr.T
            p, rec = float((sim.max(1).values * wc).sum()), float((sim.max(0).values * wr).sum())
            best = max(best, 2 * p * rec / (p + rec))
        out.append((best - b) / (1 - b))
    return out


from pathlib import Path  # noqa: E402


def test_bertscore_is_greedy_matching_rescaled_with_the_baseline(tiny):
    from captioning.semantic import load_bertscore

    preds = ["Two Lemons on a Black Plate", "A Red Bowl of Olives", "three eggs", "Grilled Salmon"]
    refs = [["Two Lemons on a Black Plate"], ["A Red Bowl of Two Olives", "Four Olives"], ["Three Eggs on a Plate"],
            ["One Egg on a Red Plate"]]
    scorer = load_bertscore(tiny["bert"])
    assert scorer.layer == 2 and scorer.rescaled and "rescaled with baseline" in scorer.describe()
    got = scorer.f1(preds, refs)
    assert got == pytest.approx(direct_bertscore(tiny["bert"], preds, refs, 2), abs=1e-4)
    assert got[0] == pytest.approx(1.0, abs=1e-5)  # identical titles: F1 1 before and after rescaling
    b = float(Path(tiny["bert"], "bertscore_baseline.tsv").read_text().split()[3].split(",")[3])
    assert scorer.f1(["", "  "], refs[:2]) == pytest.approx([-b / (1 - b)] * 2)  # empty: a raw 0, rescaled
    raw = load_bertscore(tiny["bert"], layer=1, rescale=False)
    assert "layer 1" in raw.describe() and "not rescaled" in raw.describe()


def test_true_titles_beat_permuted_titles(tiny):
    """The control: the same titles given to the wrong images score lower with the trained tiny CLIP."""
    from captioning.semantic import semantic_scores

    titles = tiny["titles"]
    permuted = titles[5:] + titles[:5]
    true, _ = semantic_scores(titles, titles, tiny["records"], tiny["clip"], tiny["bert"])
    wrong, _ = semantic_scores(permuted, titles, tiny["records"], tiny["clip"], tiny["bert"])
    for key in ("CLIPScore", "RefCLIPScore", "BERTScore"):
        assert true[key] > wrong[key] + 0.1, key
    assert true["CLIPScore"] > 1.5 * wrong["CLIPScore"]


def test_unloadable_models_are_skipped_with_the_reason(tiny):
    from captioning.semantic import semantic_scores

    scores, how = semantic_scores(tiny["titles"][:3], tiny["titles"][:3], tiny["records"][:3],
                                  clip_model="no-such-org/no-such-clip", bertscore_model=str(Path(tiny["clip"]) / "x"))
    assert scores == {"CLIPScore": None, "RefCLIPScore": None, "BERTScore": None}
    assert how["CLIPScore"].startswith("skipped: ") and "no-such-clip" in how["CLIPScore"]
    assert how["BERTScore"] == f"skipped: model folder {Path(tiny['clip']) / 'x'} does not exist"
    scores, how = semantic_scores(["a"], ["a"], None, clip_model=tiny["clip"], bertscore_model=tiny["clip"])
    assert scores["BERTScore"] is None and how["BERTScore"].startswith(f"skipped: {tiny['clip']} failed (")
    scores, how = semantic_scores(["a"], ["a"], None, clip_model=tiny["clip"], bertscore_model="")
    assert how == {"CLIPScore": "skipped: no images to score against", "RefCLIPScore": "skipped: no images to score "
                   "against", "BERTScore": "skipped: turned off (--bertscore-model '')"}


def test_clip_rewards_for_scst(tiny):
    from captioning.metrics import CiderD
    from captioning.scst import ClipReward, make_reward
    from captioning.semantic import load_clip

    records, titles = tiny["records"], tiny["titles"]
    reward = ClipReward(load_clip(tiny["clip"]), records)
    images = [0, 1, 2, 3, 0, 1, 2, 3]  # two sampled captions per image, the second set wrong
    caps = titles[:4] + titles[5:9]
    refs = [[titles[i]] for i in images]
    clip = make_reward("clip", [[t] for t in titles], clip=reward)(caps, refs, images)
    want = load_clip(tiny["clip"]).scores([records[i] for i in images], caps)["CLIPScore"]
    assert clip == pytest.approx(want, abs=2e-3) and clip[:4].mean() > clip[4:].mean()
    mixed = make_reward("cider+clip", [[t] for t in titles], clip=reward, clip_weight=0.25)(caps, refs, images)
    assert mixed == pytest.approx(0.75 * CiderD([[t] for t in titles]).scores(caps, refs) + 0.25 * clip)
    with pytest.raises(ValueError, match="needs a ClipReward"):
        make_reward("clip", refs)
    with pytest.raises(ValueError, match="needs each caption's image"):
        reward(caps, None)


def test_scst_recipe_trains_on_a_cider_plus_clip_reward(synth, tiny, tmp_path, capsys):
    import importlib.util
    import json

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("rl", ROOT / "task1" / "vit_gpt2_finetuned_RL.py")
    rl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl)
    out = tmp_path / "rl"
    rl.main(["--model", str(synth / "models" / "vit-gpt2"), "--data-dir", str(synth), "--output-dir", str(out),
             "--limit", "8", "--epochs", "1", "--batch-size", "8", "--samples", "2", "--baseline", "mean",
             "--reward", "cider+clip", "--clip-weight", "0.5", "--clip-model", tiny["clip"], "--bertscore-model", "",
             "--workers", "0", "--max-new-tokens", "6", "--preset", "greedy", "--cache-dir", str(tmp_path / "c")])
    saved = json.loads((out / "metrics.json").read_text())
    assert "SCST cider+clip" in saved["info"]["method"] and isinstance(saved["test"]["RefCLIPScore"], float)
    assert "mean sampled cider+clip reward" in capsys.readouterr().out


def test_metrics_cli_scores_any_predictions_file(synth, tiny, tmp_path, capsys):
    import json

    from captioning.metrics import main

    rows = [f"{r.image_name},{r.title},{t}" for r, t in zip(tiny["records"][:6], tiny["titles"][1:7])]
    rows[0] = f"{tiny['records'][0].image_name},{tiny['titles'][0]},{tiny['titles'][0]}"
    path = tmp_path / "predictions.csv"
    path.write_text("Image_Name,reference,prediction\n" + "\n".join(rows) + "\n")
    args = [str(path), "--images-dir", str(synth / "images"), "--train-csv", str(synth / "train_data.csv"),
            "--clip-model", tiny["clip"], "--bertscore-model", tiny["bert"]]
    main(args + ["--json"])
    got = json.loads(capsys.readouterr().out)[str(path)]
    assert got["ExactMatch"] == pytest.approx(1 / 6) and got["Copied"] == 1.0  # training titles, given verbatim
    assert got["CLIPScore"] > 0 and got["BERTScore"] < 1 and "6 images" in got["info"]["scorers"]["CLIPScore"]
    main(args + ["--all"])
    table = capsys.readouterr().out
    assert "| RefLength |" in table and "BERTScore: F1, " in table
    main(args[:1] + ["--clip-model", "", "--bertscore-model", ""])
    assert "CLIPScore: skipped: turned off" in capsys.readouterr().out


def test_report_shows_the_new_columns_compact_or_all(tmp_path):
    import json

    from captioning.metrics import ALL_KEYS
    from captioning.report import report

    run = tmp_path / "r"
    run.mkdir()
    test = {k: 0.5 for k in ALL_KEYS} | {"BERTScore": None, "Vocab": 7, "images": 2}
    (run / "metrics.json").write_text(json.dumps({"test": test, "info": {"method": "m"}}))
    (run / "predictions.csv").write_text("Image_Name,reference,prediction\na,Two Eggs,Two Eggs\nb,One Egg,Two Eggs\n")
    compact = report(tmp_path)["table"]
    assert "| RefCLIPScore | BERTScore | ExactMatch | Distinct |" in compact and "RefLength" not in compact
    assert "| 0.500 | - | 0.500 | 0.500 |" in compact  # a skipped score shows as "-"
    full = report(tmp_path, all_columns=True)["table"]
    assert "| Vocab | Length | RefLength |" in full and "| 7 |" in full
    page = (tmp_path / "gallery.html").read_text()
    assert "RefCLIPScore 0.500" in page and "BERTScore" not in page.split("RefCLIPScore 0.500")[1].split("</th>")[0]
