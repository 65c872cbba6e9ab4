"""captioning.report: table, gallery and curves from run folders."""
import json

import pytest

from captioning.config import UserError
from captioning.metrics import METRIC_KEYS
from captioning.report import report
from conftest import run_cli


PANEL_PX = 550  # curves.png draws each panel 5.5 inches wide at 100 dpi


def fake_run(root, name, cider, synth, method=""):
    d = root / name
    d.mkdir(parents=True)
    m = {k: 0.5 for k in METRIC_KEYS}
    (d / "metrics.json").write_text(json.dumps({"valid": {**m, "CIDEr": cider}, "test": {**m, "CIDEr": cider + 1},
                                                "info": {"method": name, "train_seconds": 42}}))
    (d / "config.json").write_text(json.dumps({"data_dir": str(synth), "method": method or name}))
    (d / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "train_loss": 3 - e, "valid": {"CIDEr": e}}) + "\n"
                                         for e in (1, 2)))
    (d / "predictions.csv").write_text("Image_Name,reference,prediction\n"
                                       "dish-3-00000,Two Eggs on a Red Plate,Two Eggs on a Red Plate\n"
                                       "ghost,A Bowl,<script>x</script>\n")


def test_report_outputs(synth, tmp_path):
    fake_run(tmp_path, "xe", 1.25, synth)
    fake_run(tmp_path, "scst", 2.5, synth)
    out = report(tmp_path)
    lines = out["table"].splitlines()
    assert len(lines) == 2 + 4 and "| xe | xe | test | ? |" in out["table"] and "3.500" in out["table"]
    assert "42 s" in out["table"]
    page = out["gallery"].read_text()
    assert "data:image/png;base64" in page and "image not found" in page
    assert "<script>x" not in page and "&lt;script&gt;" in page
    assert out["curves"].stat().st_size > 1000
    assert image_width(out["curves"]) == 2 * PANEL_PX  # training loss, validation CIDEr


def test_curves_give_scst_losses_their_own_panel(synth, tmp_path):
    fake_run(tmp_path, "xe", 1.25, synth)
    fake_run(tmp_path, "rl", 2.5, synth, method="vit_gpt2_finetuned_RL (SCST cider, mean baseline, after XE)")
    assert image_width(report(tmp_path)["curves"]) == 3 * PANEL_PX  # cross-entropy, SCST, validation CIDEr


def image_width(path):
    from PIL import Image

    return Image.open(path).size[0]


def test_report_errors(tmp_path):
    with pytest.raises(UserError):
        report(tmp_path / "none")
    p = run_cli("-m", "captioning.report", tmp_path)
    assert p.returncode == 2 and "no run folders" in p.stderr


def test_table_counts_images_and_gallery_names_a_seeded_sample(synth, tmp_path):
    """A --limit run says how many images it scored; the gallery shows a seeded sample of the test
    images (not the first rows), each with its name, at THUMB_PX, and an empty caption is marked."""
    from captioning.report import THUMB_PX, gallery

    import pandas as pd

    fake_run(tmp_path, "full", 1.0, synth)
    fake_run(tmp_path, "limited", 2.0, synth)
    m = json.loads((tmp_path / "limited" / "metrics.json").read_text())
    m["test"]["images"] = 48
    (tmp_path / "limited" / "metrics.json").write_text(json.dumps(m))
    table = report(tmp_path)["table"]
    assert "| limited | limited | test | 48 |" in table and "| full | full | test | ? |" in table

    test = pd.read_csv(synth / "test_data.csv", dtype=str)
    names = list(test["Image_Name"][:40])
    rows = pd.DataFrame({"Image_Name": names, "reference": list(test["Title"][:40])})
    (tmp_path / "full" / "predictions.csv").write_text(rows.assign(prediction=rows["reference"]).to_csv(index=False))
    (tmp_path / "limited" / "predictions.csv").write_text(rows.assign(prediction="").to_csv(index=False))
    page = gallery([tmp_path / "full", tmp_path / "limited"], tmp_path, n=8).read_text()
    shown = [n for n in names if f"<div class=name>{n}</div>" in page]
    assert len(shown) == 8 and shown != names[:8]  # drawn from all 40, sorted by name
    assert page.count("(empty caption)") == 8
    assert gallery([tmp_path / "full"], tmp_path, n=8).read_text().count("class=name") == 8
    import base64
    import io
    import re

    from PIL import Image

    first = re.search(r"base64,([^\"]+)", page).group(1)
    assert THUMB_PX // 2 < max(Image.open(io.BytesIO(base64.b64decode(first))).size) <= THUMB_PX


def test_curves_one_colour_per_run_whole_epochs_and_scst_after_its_start(synth, tmp_path):
    from captioning.report import curve_figure

    fake_run(tmp_path, "vit_gpt2_finetuned", 1.25, synth)
    fake_run(tmp_path, "rl", 2.5, synth, method="vit_gpt2_finetuned_RL (SCST cider, mean baseline, after XE)")
    cfg = json.loads((tmp_path / "rl" / "config.json").read_text())
    cfg["model"] = str(tmp_path / "vit_gpt2_finetuned" / "best")
    (tmp_path / "rl" / "config.json").write_text(json.dumps(cfg))
    fig = curve_figure([tmp_path / "vit_gpt2_finetuned", tmp_path / "rl"])
    lines = [line for ax in fig.axes for line in ax.lines]
    colours = {}
    for line in lines:
        colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert len(colours) == 2 and all(len(c) == 1 for c in colours.values())  # same colour in every panel
    assert colours["vit_gpt2_finetuned"] != colours["rl (after vit_gpt2_finetuned)"]
    rl_x = {tuple(line.get_xdata()) for line in lines if line.get_label().startswith("rl")}
    assert rl_x == {(3, 4)}  # the fine-tuning run ended at epoch 2
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
