"""The collapse guard: the share of distinct captions and the most frequent caption's share, in the log,
metrics.json and the report."""
import json
from types import SimpleNamespace

import torch

from captioning.config import RunConfig
from captioning.engine import Run, evaluate_splits
from captioning.metrics import caption_spread, collapse_warning
from captioning.report import report


def test_caption_spread_counts_after_normalising():
    s = caption_spread(["Two Eggs", "two eggs ", "One Lime", "Two  Eggs"])
    assert s["distinct_share"] == 0.5 and s["top_share"] == 0.75 and s["top_caption"] == "two eggs"
    assert s["collapsed"] and "75%" in collapse_warning(s, "test images")
    even = caption_spread(["a", "a", "b", "c"])  # exactly half is not a collapse
    assert even["top_share"] == 0.5 and not even["collapsed"] and collapse_warning(even) is None
    assert caption_spread([])["distinct_share"] == 0.0


class _Split:
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return {"index": i}


def test_collapsed_run_is_logged_recorded_and_marked(tmp_path, capsys):
    rec = [SimpleNamespace(image_name=f"im{i}", title=t, references=[t])
           for i, t in enumerate(["Two Eggs on a Red Plate", "One Lime on a Blue Plate", "A Red Bowl of Four Olives",
                                  "Three Carrots on a Black Plate"])]
    cfg = RunConfig(output_dir=str(tmp_path / "run"), preset="greedy", batch_size=2, clip_model="", bertscore_model="")
    run = Run(cfg, "constant captioner")

    def caption(model, batch, preset):  # the same title for everything but the first image
        return ["Two Eggs on a Red Plate" if i else "One Lime" for i in batch["index"].tolist()]

    evaluate_splits(run, cfg, caption, torch.nn.Identity(), {"valid": _Split(rec), "test": _Split(rec)}, "cpu",
                    collate_fn=lambda items: {"index": torch.tensor([x["index"] for x in items])})
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["collapse"]["test"]["top_share"] == 0.75 and saved["collapse"]["test"]["distinct_share"] == 0.5
    assert "75% of the test images" in capsys.readouterr().err
    table = report(tmp_path)["table"]
    assert "COLLAPSED: one caption for 75% of the images" in table
