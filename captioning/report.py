"""Compare runs: one markdown table, an HTML gallery of test captions, training curves.

    python -m captioning.report runs/ [--gallery-size 16]

Reads only the run folders' files (config.json, metrics.json, log.jsonl, predictions.csv) and
writes RUNS/results.md, RUNS/gallery.html and RUNS/curves.png.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys
from pathlib import Path

from .config import UserError, run_main
from .data import read_csv, run_folders
from .metrics import ALL_KEYS, COMPACT_KEYS


def find_runs(root) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"runs folder {root} does not exist.")
    return sorted({p.parent for p in root.rglob("metrics.json")}, key=lambda p: p.stat().st_mtime)


def _read_json(path: Path, default=None):
    """A JSON object from path, or `default` (with a warning) when the file is unreadable or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    if not isinstance(obj, dict):
        if path.exists():
            print(f"warning: {path} is not a readable JSON object; left out.", file=sys.stderr)
        return default
    return obj


def _read_log(path: Path) -> list[dict]:
    """The epochs of a log.jsonl; lines cut short (a killed run) or without a loss are left out."""
    rows = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and "train_loss" in row:
            rows.append(row)
    return rows


def _collapse_mark(metrics: dict, split: str) -> str:
    """" COLLAPSED (...)" when one caption covers more than half of the split (metrics.caption_spread)."""
    spread = metrics.get("collapse")
    spread = spread.get(split) if isinstance(spread, dict) else None
    if not isinstance(spread, dict) or not spread.get("collapsed"):
        return ""
    share = spread.get("top_share")
    share = f"{share:.0%}" if isinstance(share, (int, float)) else "most"
    return f" **COLLAPSED: one caption for {share} of the images**"


def _cell(value) -> str:
    """A score as the tables print it: "-" when it is missing or was skipped."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def results_table(runs: list[Path], root: Path, keys=COMPACT_KEYS) -> str:
    """One row per run and split; `keys` are the score columns (ALL_KEYS for every one)."""
    head = ["run", "method", "split", "images", *keys, "train time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(keys) + 2)]
    for run in runs:
        metrics = _read_json(run / "metrics.json", {})
        info = metrics.get("info") if isinstance(metrics.get("info"), dict) else {}
        secs = info.get("train_seconds")
        secs = secs if isinstance(secs, (int, float)) else None
        when = "-" if secs is None else (f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.1f} min")
        for split in ("valid", "test"):
            if isinstance(metrics.get(split), dict):
                m = metrics[split]
                vals = [_cell(m.get(k)) for k in keys]
                name = str(run.relative_to(root)) if run != root else run.name
                method = str(info.get("method", "?")) + _collapse_mark(metrics, split)
                n = m.get("images")  # runs written before the count was recorded show "?"
                n = str(n) if isinstance(n, int) else "?"
                lines.append("| " + " | ".join([name, method, split, n, *vals, when]) + " |")
    return "\n".join(lines) + "\n"


THUMB_PX = 224  # longest side of a gallery picture


def _thumb(path: Path | None, size: int = THUMB_PX) -> str:
    from PIL import Image

    from .data import ImageError, load_image

    if path is None:
        return "<i>image not found</i>"
    try:
        im = load_image(path)
    except ImageError as e:
        return f"<i>{html.escape(str(e))}</i>"
    im.thumbnail((size, size), Image.BICUBIC)
    if max(im.size) < size:  # a small picture is enlarged by a whole factor, pixels kept sharp
        k = size // max(im.size)
        im = im.resize((im.width * k, im.height * k), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _caption_cell(text, reference: str) -> str:
    if text is None:
        return "<td class=none><i>(not captioned)</i></td>"
    if not str(text).strip():
        return "<td class=no><i>(empty caption)</i></td>"
    ok = str(text).strip().lower() == reference.strip().lower()
    return f"<td class={'ok' if ok else 'no'}>{html.escape(str(text))}</td>"


GALLERY_KEYS = ("CIDEr", "RefCLIPScore", "BERTScore", "ExactMatch", "Distinct")


def _summary(run: Path) -> str:
    """The run's test scores in one short line for the gallery's header (skipped ones left out)."""
    test = (_read_json(run / "metrics.json", {}) or {}).get("test")
    test = test if isinstance(test, dict) else {}
    return " · ".join(f"{k} {_cell(test.get(k))}" for k in GALLERY_KEYS if _cell(test.get(k)) != "-")


def gallery(runs: list[Path], out: Path, n: int = 16, seed: int = 0) -> Path | None:
    """gallery.html: n test images drawn at random (seeded, so reruns compare the same images), each
    with its name, the reference and every run's caption."""
    from .data import resolve_image

    preds, folders, images_dir = {}, {}, None
    for run in runs:
        p = run / "predictions.csv"
        if not p.exists():
            continue
        try:
            df = read_csv(p, required=("Image_Name", "reference", "prediction"))
        except UserError as e:
            print(f"warning: {e} The run is left out of the gallery.", file=sys.stderr)
            continue
        if not df["reference"].str.strip().any():  # captions of new photos: no test split to compare
            continue
        preds[run.name] = df.drop_duplicates("Image_Name").set_index("Image_Name")
        folders[run.name] = run
        cfg = _read_json(run / "config.json", {})
        if images_dir is None:
            images_dir = run_folders(cfg)[1]  # --images-dir, DATA_DIR/images, or the --dataset layout's
    if not preds:
        return None
    base = next(iter(preds.values()))
    shown = base.sample(min(n, len(base)), random_state=seed).sort_index() if n > 0 else base.iloc[:0]
    names = list(preds)
    rows = []
    for image, r in shown.iterrows():
        path = resolve_image(images_dir, image) if images_dir else None
        cells = [f"<td>{_thumb(path)}<div class=name>{html.escape(str(image))}</div></td>",
                 f"<td class=ref>{html.escape(r['reference'])}</td>"]
        for name in names:
            df = preds[name]
            text = df.at[image, "prediction"] if image in df.index else None
            cells.append(_caption_cell(text, r["reference"]))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(x)}</th>" for x in ["image", "reference"]) + "".join(
        f"<th>{html.escape(name)}<br><small>{html.escape(_summary(folders[name]))}</small>"
        f"{_model_line(folders[name], out)}</th>" for name in names)
    page = f"""<!doctype html><meta charset=utf-8><title>Caption gallery</title>
<style>body{{font-family:sans-serif}} td,th{{border:1px solid #ccc;padding:4px;vertical-align:middle}}
table{{border-collapse:collapse}} .ref{{font-weight:bold}} .ok{{background:#e6f6e6}} .no{{background:#fbeaea}}
.name{{font-family:monospace;font-size:small;color:#555}} .model{{font-weight:normal;font-size:small}}</style>
<h1>Test captions</h1><p>{len(shown)} of the {len(base)} test images, drawn at random (seed {seed}), sorted by
name. Green: the prediction equals the reference (ignoring case).</p>
<table><tr>{head}</tr>{''.join(rows)}</table>"""
    path = out / "gallery.html"
    path.write_text(page)
    return path


def _model_line(run: Path, out: Path) -> str:
    """Under a run's name in the gallery: its model's family and preset from best/'s captioner manifest
    (nothing is loaded), with a link to the model card."""
    from .captioner import read_manifest

    try:
        manifest = read_manifest(run / "best") if (run / "best").is_dir() else None
    except UserError:
        manifest = None
    if manifest is None:
        return ""
    family, settings = manifest["family"], manifest["settings"]
    card = run / "best" / "README.md"
    link = ""
    if card.exists():
        href = os.path.relpath(card, out)
        link = f' &middot; <a href="{html.escape(href)}">model card</a>'
    preset = html.escape(str(settings.get("preset", "")))
    return f"<div class=model>{html.escape(family)}{' &middot; ' + preset if preset else ''}{link}</div>"


def _continues(runs: list[Path], configs: dict) -> dict:
    """{run name: name of the run it continues}: a run whose --model is another run's best/ folder
    (SCST after cross-entropy) carries on that run's epochs."""
    by_dir = {run.resolve(): run.name for run in runs}
    out = {}
    for run in runs:
        model = str(configs.get(run.name, {}).get("model") or "")
        if not model:
            continue
        folder = Path(model).parent if Path(model).name == "best" else Path(model)
        for cand in (folder, run.parent / folder.name):  # as launched, or a sibling in the runs folder
            parent = by_dir.get(cand.resolve())
            if parent and parent != run.name:
                out[run.name] = parent
                break
    return out


def curves(runs: list[Path], out: Path) -> Path | None:
    """curves.png (curve_figure), or None when no run has a training log."""
    fig = curve_figure(runs)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curve_figure(runs: list[Path]):
    """The figure of curves.png: training loss (SCST runs' in a panel of their own) and the validation
    metric per epoch, one colour per run in every panel. A run that continues another (SCST from a fine-tuned
    run's best/) is drawn after that run's last epoch."""
    logs, configs, scst = {}, {}, set()
    for run in runs:
        rows = _read_log(run / "log.jsonl")
        if rows:
            logs[run.name] = rows
            configs[run.name] = _read_json(run / "config.json", {}) or {}
            if "SCST" in str(configs[run.name].get("method", "")):
                scst.add(run.name)
    if not logs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    parents = _continues([r for r in runs if r.name in logs], configs)

    def offset(name, seen=()):
        parent = parents.get(name)
        if parent is None or parent in seen:
            return 0
        return logs[parent][-1]["epoch"] + offset(parent, (*seen, name))

    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {name: palette[i % len(palette)] for i, name in enumerate(logs)}
    # an SCST loss is a policy-gradient surrogate (negative when samples beat their baseline), not a
    # cross-entropy: it gets its own panel
    panels = 3 if scst and len(scst) < len(logs) else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    a, b = axes[0], axes[-1]
    s = axes[1] if panels == 3 else a
    for name, rows in logs.items():
        shift = offset(name)
        label = f"{name} (after {parents[name]})" if shift else name
        style = dict(color=colour[name], label=label)
        (s if name in scst else a).plot([r["epoch"] + shift for r in rows], [r["train_loss"] for r in rows],
                                        marker=".", **style)
        val = [(r["epoch"] + shift, r["valid"]["CIDEr"]) for r in rows if "CIDEr" in (r.get("valid") or {})]
        if val:
            b.plot(*zip(*val), marker="o", **style)
    a.set(title="training loss" if panels == 2 else "training loss (cross-entropy)", xlabel="epoch")
    if panels == 3:
        s.set(title="SCST loss (-advantage x log p)", xlabel="epoch")
        s.legend(fontsize=8)
    b.set(title="validation CIDEr", xlabel="epoch")
    a.legend(fontsize=8)
    if b.lines:  # runs without a validation epoch draw nothing here
        b.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    return fig


def report(root, gallery_size: int = 16, all_columns: bool = False) -> dict:
    root = Path(root)
    runs = find_runs(root)
    if not runs:
        raise UserError(f"no run folders (with metrics.json) under {root}.")
    table = results_table(runs, root, ALL_KEYS if all_columns else COMPACT_KEYS)
    (root / "results.md").write_text(table)
    return {"table": table, "results": root / "results.md", "gallery": gallery(runs, root, gallery_size),
            "curves": curves(runs, root)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m captioning.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", help="folder holding run folders")
    p.add_argument("--gallery-size", type=int, default=16, help="test images in the gallery (default 16)")
    p.add_argument("--all", action="store_true",
                   help="every score in the table (default: BLEU-4, METEOR, CIDEr, CLIPScore, RefCLIPScore, "
                        "BERTScore, exact match, distinct titles)")
    a = p.parse_args(argv)
    out = report(a.runs, a.gallery_size, a.all)
    print(out["table"], end="")
    for key in ("results", "gallery", "curves"):
        if out[key]:
            print(f"{key}: {out[key]}")


if __name__ == "__main__":
    run_main(main)
