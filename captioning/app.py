"""A web page that captions dish photos with one or more models, side by side (Gradio).

    python -m captioning.app --model runs/vit_gpt2_finetuned --model runs/llama_lora
    python -m captioning.app --runs demo_runs            # every trained run of a folder (make app)
    python -m captioning.app --model runs/x --host 0.0.0.0 --port 8080   # reachable from other machines

Upload, drop or paste a photo, or click one of the test split's examples (taken from the first
run's predictions.csv; for those the real title is shown too). Each model's title appears side by
side with its top-k alternatives and their scores. Models load once, at start. A file that is not
an image, an image too large to decode safely, or an empty upload gets a message and the page keeps
serving. The server binds 127.0.0.1 (this machine only) unless --host says otherwise; Gradio's
usage analytics are off.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import UserError, hf_token, run_main

MAX_UPLOAD = "25mb"


def examples_of(captioners, n: int) -> list[tuple[str, str]]:
    """Up to n (image path, real title) of the test split, from the first model that is a run's best/ with
    a predictions.csv (the images found through its config.json, never outside its images folder)."""
    import json

    from .data import read_csv, resolve_image

    for c in captioners:
        run = Path(c.source).parent
        if n <= 0 or Path(c.source).name != "best" or not (run / "predictions.csv").exists():
            continue
        try:
            cfg = json.loads((run / "config.json").read_text())
            df = read_csv(run / "predictions.csv", required=("Image_Name", "reference"))
        except (OSError, ValueError, UserError):
            continue
        images = Path(cfg.get("images_dir") or Path(cfg.get("data_dir", "data")) / "images")
        out = []
        for name, ref in zip(df["Image_Name"], df["reference"]):
            path = resolve_image(images, name)
            if path is not None:
                out.append((str(path), ref))
            if len(out) == n:
                break
        if out:
            return out
    return []


def make_title(captioners, names, preset=None, top_k: int = 3):
    """fn(image path, real title) -> (one title per model, alternatives as markdown, message)."""
    from .data import ImageError, load_image

    def title(image, real_title=""):
        blank = [""] * len(captioners)
        if not image:
            return (*blank, "", "Choose a photo first: upload, drop or paste one, or click an example.")
        try:
            im = load_image(image)
        except ImageError as e:
            return (*blank, "", f"That file cannot be captioned: {e}. Try a JPEG, PNG or WebP photo.")
        except Exception as e:  # a decoder bug on a hostile file: still a message, the page keeps serving
            return (*blank, "", f"That file cannot be captioned ({type(e).__name__}).")
        caps = [c.caption([im], preset=preset, top_k=top_k)[0] for c in captioners]
        lines = []
        for name, c in zip(names, caps):
            if c.alternatives:
                alts = "; ".join(f"{t or '(empty)'} ({s:.2f})" for t, s in c.alternatives)
                lines.append(f"**{name}**: {alts}")
        note = f"Real title: **{real_title}**" if real_title else ""
        return (*[c.title for c in caps], "\n\n".join(lines), note)

    return title


def safe_image(**kwargs):
    """A gr.Image whose upload reaches the function as a file path even when Gradio's own PIL.open fails on
    it: the toolkit's safe loader then reads it, so a text file or a decompression bomb becomes a message,
    not a server error. (The instance's preprocess is wrapped; a subclass would make Gradio write a .pyi
    stub next to this file.)"""
    import gradio as gr

    image = gr.Image(**kwargs)
    own = image.preprocess

    def preprocess(payload):
        try:
            return own(payload)
        except Exception:  # not an image, as far as PIL.open can tell: our loader says why
            return getattr(payload, "path", None)

    image.preprocess = preprocess
    return image


def build(captioners, examples: list[tuple[str, str]] = (), preset=None, top_k: int = 3):
    """The Gradio Blocks of the page (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .caption import column_names

    names = column_names(captioners)
    title = make_title(captioners, names, preset, top_k)
    with gr.Blocks(title="Food captioner") as page:
        gr.Markdown("# What dish is this?\nUpload, drop or paste a photo of a dish, or click an example below. "
                    "Models: " + ", ".join(f"**{n}** ({c.describe()['family']}, {c.preset})"
                                           for n, c in zip(names, captioners)))
        with gr.Row():
            with gr.Column():
                image = safe_image(label="Dish photo", type="filepath", sources=["upload", "clipboard"], height=320)
                real = gr.Textbox(label="Real title (examples only)", interactive=False, visible=False)
                button = gr.Button("Caption", variant="primary")
            with gr.Column():
                outs = [gr.Textbox(label=n, interactive=False, elem_classes=["title"]) for n in names]
                alts = gr.Markdown(label="Alternatives")
                message = gr.Markdown(elem_id="message")
        outputs = [*outs, alts, message]
        button.click(title, [image, real], outputs, api_name="title")
        image.upload(lambda: "", None, real, api_name=False).then(title, [image, real], outputs, api_name=False)
        image.clear(lambda: "", None, real, api_name=False)
        if examples:
            gr.Examples([[p, t] for p, t in examples], inputs=[image, real], outputs=outputs, fn=title,
                        run_on_click=True, cache_examples=False, label="Test-split examples (click one)")
    return page


def runs_with_models(folder) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"runs folder {folder} does not exist (make app serves the runs of make demo: run "
                        "make demo first).")
    found = sorted(str(p.parent) for p in folder.glob("*/best") if p.is_dir())
    if not found:
        raise UserError(f"{folder} holds no trained run with a best/ model (run make demo first).")
    return found


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m captioning.app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], metavar="M",
                   help="a run folder, a best/ folder, a task2 run, or a hub id or model folder (repeatable)")
    p.add_argument("--runs", metavar="DIR", help="also serve every run of DIR that has a best/ model")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--examples", type=int, default=8, help="test-split examples to show (default 8)")
    p.add_argument("--top-k", type=int, default=3, help="alternatives per model (default 3; 0: none)")
    p.add_argument("--preset", help="decoding for every model (default: each model's own)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the GPU if there is one)")
    p.add_argument("--hf-token", default="", help="token for gated hub models (default: $HF_TOKEN)")
    a = p.parse_args(argv)
    models = a.model + (runs_with_models(a.runs) if a.runs else [])
    if not models:
        raise UserError("pass at least one --model (or --runs DIR).")
    if a.top_k < 0:
        raise UserError("--top-k must be at least 0.")
    from .captioner import load_captioner
    from .generation import PRESETS

    if a.preset is not None and a.preset not in PRESETS:
        raise UserError(f"unknown decoding preset {a.preset!r}; choose one of {', '.join(PRESETS)}.")
    token = hf_token(a.hf_token)
    captioners = [load_captioner(m, token, a.device) for m in models]
    page = build(captioners, examples_of(captioners, a.examples), a.preset, a.top_k)
    print(f"serving {len(captioners)} model(s) on http://{a.host}:{a.port} (Ctrl+C stops)", file=sys.stderr)
    try:
        page.launch(server_name=a.host, server_port=a.port, share=False, max_file_size=MAX_UPLOAD,
                    show_error=True, quiet=True)
    except OSError as e:
        raise UserError(f"cannot serve on {a.host}:{a.port} ({e}); pass another --port.") from None


if __name__ == "__main__":
    run_main(main)
