"""The SCST rewards: CIDEr-D with fixed document frequencies, the fast tokenizer, batched METEOR."""
import math
import random

import numpy as np
import pytest

from captioning.metrics import CiderD, fast_tokenize, meteor_scores, tokenize

WORDS = "one two three four lemons tomatoes olives on a an blue red white plate bowl of the".split()


def _sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 9)))


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(7)
    gts = {i: [_sentence(rng) for _ in range(rng.randint(1, 4))] for i in range(60)}
    res = {i: [_sentence(rng)] for i in range(60)}
    train = [[_sentence(rng) for _ in range(rng.randint(1, 3))] for _ in range(200)]
    return gts, res, train


def test_equals_pycocoevalcap_on_its_own_document_frequencies(corpus):
    from pycocoevalcap.cider.cider import Cider

    gts, res, _ = corpus
    mean, per_image = Cider().compute_score(gts, res)
    scorer = CiderD([gts[i] for i in gts], tokenize=None)
    mine = scorer.scores([res[i][0] for i in res], [gts[i] for i in gts])
    assert per_image.std() > 0.1  # the check below compares real, varied scores
    np.testing.assert_allclose(mine, per_image, rtol=1e-12, atol=1e-12)
    assert mine.mean() == pytest.approx(mean, rel=1e-12)


def test_equals_pycocoevalcap_given_training_document_frequencies(corpus):
    """Both scorers use the df of a separate training corpus (the SCST setting)."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    gts, res, train = corpus
    scorer = CiderD(train, tokenize=None)

    class FixedDF(CiderScorer):  # pycocoevalcap's arithmetic, our corpus statistics
        ref_len = property(lambda self: scorer.log_corpus, lambda self, value: None)

        def compute_doc_freq(self):
            self.document_frequency.update(scorer.document_frequency)

    ref = FixedDF()
    for i in gts:
        ref += (res[i][0], gts[i])
    ref.compute_doc_freq()  # (compute_score would also assert df <= #captions scored, false here)
    expected = np.array(ref.compute_cider())
    mine = scorer.scores([res[i][0] for i in res], [gts[i] for i in gts])
    np.testing.assert_allclose(mine, expected, rtol=1e-12, atol=1e-12)
    # and the training df really differs from the evaluated one: the scores change
    own = CiderD([gts[i] for i in gts], tokenize=None).scores([res[i][0] for i in res], [gts[i] for i in gts])
    assert np.abs(own - mine).max() > 1e-3
    assert scorer.log_corpus == pytest.approx(math.log(200))


def test_reward_does_not_depend_on_the_batch(corpus):
    gts, res, train = corpus
    scorer = CiderD(train)
    caps, refs = [res[i][0] for i in res], [gts[i] for i in gts]
    together = scorer.scores(caps, refs)
    alone = [scorer.score(c, r) for c, r in zip(caps, refs)]
    np.testing.assert_allclose(together, alone)
    assert scorer.score("two lemons on a blue plate", ["Two Lemons on a Blue Plate."]) > \
        scorer.score("three lemons on a blue plate", ["Two Lemons on a Blue Plate."])


def test_fast_tokenizer_matches_the_evaluation_tokenizer():
    titles = ["Mom's Apple Pie", "Sun-Dried Tomato & Basil Pasta", "Crispy (Oven-Baked) Chicken, with Lemon!",
              "Two Lemons on a Black Plate", "Pasta e Fagioli: Grandma's 3.5-Minute Version",
              "Don't Skip the Café Crème", "S'mores Bars", "Salt-and-Pepper Shrimp with 2 Sauces; Quick"]
    _, res = tokenize(titles, titles)
    assert [fast_tokenize(t) for t in titles] == [res[i][0] for i in range(len(titles))]


def test_batched_meteor_equals_pycocoevalcap_per_caption():
    from captioning.metrics import get_meteor

    caps = ["two lemons on a blue plate", "a red bowl of three olives", "", "one egg on a plate | |",
            "two lemons on a blue plate"]
    refs = [["Two Lemons on a Blue Plate"], ["A Red Bowl of Four Olives", "A Red Bowl of Olives"],
            ["One Tomato on a White Plate"], ["One Egg on a Black Plate"], ["Two Lemons on a Blue Plate"]]
    mine = meteor_scores(caps, refs)
    gts = {i: [fast_tokenize(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [fast_tokenize(c.replace("|", " ")) or "."] for i, c in enumerate(caps)}
    _, expected = get_meteor().compute_score(gts, res)
    np.testing.assert_allclose(mine, expected, rtol=1e-9)
    assert mine[0] > mine[1] > mine[2] >= 0 and mine[4] == mine[0]
    assert meteor_scores([], []) == []
