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
    assert len(lines) == 2 + 4 and "| xe | xe | test |" in out["table"] and "3.500" in out["table"]
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
