"""Caption your own photos with any trained run or captioning model: no CSV, no code.

    python -m captioning.caption --model runs/vit_gpt2_finetuned photos/
    python -m captioning.caption --model runs/vit_gpt2_finetuned --model runs/llama_lora \\
        --recursive --top-k 3 --out titles.csv photos/ 'more/*.webp' dish.jpg

--model takes a run folder (its best/ model), a best/ folder, a task2 run, or a VisionEncoderDecoder
or chat-VLM hub id or folder (captioning.captioner.load_captioner); several --model give their
titles side by side. PATH is a file, a folder (its files; with --recursive also its subfolders) or a
glob. Every format Pillow reads is captioned (JPEG, PNG, WebP, GIF, BMP, TIFF, ...; HEIC when the
pillow-heif plugin is installed). Files that cannot be captioned are skipped and named with the
reason; links that lead out of a folder and anything that is not a regular file are never opened.
Images are read one batch at a time, so a folder of any size runs in constant memory. Each model
decodes with its own preset (the one its run was scored with) unless --preset says otherwise.
Prints `path: title` (one line per model when there are several) and, with --out, writes a CSV:
path, one column of titles per model and, with --top-k, a column per model of the k best
alternatives with their scores as JSON ([[title, score], ...]; the score is the mean
log-probability per token, 0 = certain).

Under `accelerate launch --num_processes N` (or torchrun) each process takes every N-th run of
--batch-size files on its own GPU, and the main process alone prints and writes them, in the order of
one process (see caption_paths).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import stat
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from .config import UserError, hf_token, run_main

HEIC_EXTS = (".heic", ".heif", ".avif")


@dataclass
class Item:
    path: Path  # what the user named or what a folder walk found (printed as is)
    skip: str = ""  # why it is not captioned ("" = caption it)


def heic_plugin() -> bool:
    """Registers pillow-heif's opener with Pillow when the plugin is installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def _walk(folder: Path, recursive: bool):
    """Files under `folder` in name order (subfolders too when recursive); links leading out of it and
    special files are yielded as skips; nothing is followed out of the folder, nothing read."""
    root = folder.resolve()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as e:
            yield Item(current, f"cannot list the folder ({e.strerror})")
            continue
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    yield Item(path, "link leading outside the folder")
                    continue
                if target.is_dir():
                    continue  # a link to a folder inside: its files are found directly (no loops)
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    subfolders.append(path)
                continue
            yield _check_file(path)
        stack.extend(reversed(subfolders))


def _check_file(path: Path) -> Item:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Item(path, "file not found" if not path.is_symlink() else "broken link")
    except OSError as e:
        return Item(path, f"cannot read ({e.strerror})")
    if not stat.S_ISREG(st.st_mode):
        return Item(path, "not a regular file")  # a FIFO or device would block or never end
    if st.st_size == 0:
        return Item(path, "empty file")
    return Item(path)


def find_images(paths: list[str], recursive: bool = False, leave_out=None):
    """Items for every file the arguments name: files, folders and globs, each file once, in order;
    `leave_out(realpath)` true drops a file without a word (the command's own output)."""
    seen = set()
    for arg in paths:
        p = Path(arg).expanduser()
        if p.is_dir():
            found = _walk(p, recursive)
        elif p.exists() or p.is_symlink():
            found = [_check_file(p)]
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=recursive))
            found = (item for m in matches for item in (_walk(Path(m), recursive) if Path(m).is_dir()
                                                           else [_check_file(Path(m))]))
            if not matches:
                found = [Item(p, "no file matches this pattern")]
        else:
            found = [Item(p, "no such file or folder")]
        for item in found:
            key = os.path.realpath(item.path)
            if key not in seen and not (leave_out and leave_out(key)):
                seen.add(key)
                yield item


def read_image(item: Item, heic: bool):
    """(8-bit RGB PIL image, "") or (None, reason): the toolkit's safe loader (EXIF orientation, alpha on
    white, 16-bit scaled, decompression bombs refused)."""
    from .data import ImageError, load_image

    if item.path.suffix.lower() in HEIC_EXTS and not heic:
        return None, "HEIC/AVIF needs the pillow-heif plugin (pip install pillow-heif)"
    try:
        return load_image(item.path), ""
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # a decoder bug on a hostile file is still just a bad image
        return None, f"cannot decode ({type(e).__name__})"


def batches(items, batch_size: int, heic: bool, on_skip):
    """Lists of (item, image) of at most batch_size decoded images; skips go to on_skip(item, reason).
    Only one batch of images is held at a time."""
    batch = []
    for item in items:
        image, why = (None, item.skip) if item.skip else read_image(item, heic)
        if image is None:
            on_skip(item, why)
            continue
        batch.append((item, image))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def column_names(captioners) -> list[str]:
    """One distinct column name per model (its run name; repeats get #2, #3)."""
    names = []
    for c in captioners:
        name, n = c.name, 2
        while name in names:
            name, n = f"{c.name} #{n}", n + 1
        names.append(name)
    return names


def printable(path: Path) -> str:
    text = str(path)
    return text if text.isprintable() else ascii(text)[1:-1]


class CsvOut:
    """The --out file, written row by row into a temporary file and renamed into place when complete:
    an interrupted run never leaves a half file under the name, and an existing file is never replaced
    unless --overwrite."""

    def __init__(self, path: str | None, header: list[str], overwrite: bool, write: bool = True):
        self.path = Path(path) if path else None
        if self.path is None:
            return
        if self.path.is_dir():
            raise UserError(f"--out {self.path} is a folder; pass a file name such as titles.csv.")
        if self.path.exists() and not overwrite:
            raise UserError(f"{self.path} already exists; pass --overwrite to replace it or choose another --out.")
        if not write:  # checked by every process (each stops with the same sentence), written by the main one
            self.path = None
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            self.file = open(self.tmp, "w", newline="", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {self.path} ({e.strerror}).") from None
        self.writer = csv.writer(self.file)
        self.writer.writerow(header)

    def row(self, values) -> None:
        if self.path is not None:
            self.writer.writerow(values)

    def finish(self, keep: bool) -> None:
        if self.path is None:
            return
        self.file.close()
        if keep:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def caption_batch(captioners, batch, preset, top_k, max_new_tokens) -> list[tuple[str, list[str], list[str]]]:
    """(path, title per model, top-k JSON per model) of each image of one batch of (item, image)."""
    images = [im for _, im in batch]
    results = [c.caption(images, preset=preset, top_k=top_k, max_new_tokens=max_new_tokens) for c in captioners]
    return [(str(item.path), [r[i].title for r in results],
             [json.dumps([[t, s] for t, s in r[i].alternatives]) for r in results] if top_k else [])
            for i, (item, _) in enumerate(batch)]


def caption_paths(captioners, paths, recursive=False, batch_size=32, preset=None, top_k=0, max_new_tokens=None,
                  out=None, overwrite=False, echo=print, progress=True) -> dict:
    """Caption every image the paths name with every captioner, a batch at a time; returns
    {"captioned": n, "skipped": [(path, reason)], "titles": {path: [title per model]}}.

    Under a launcher with N processes the files are dealt in runs of batch_size (without a skip, one
    process's batches): run i to process i mod N, which decodes and captions only its own; after each
    round of N runs every process gathers the rounds' titles and skips (a few strings), and the main
    process alone prints them and writes the CSV, in file order, each once. Every process returns the
    whole result."""
    from tqdm.auto import tqdm

    from . import distributed

    heic = heic_plugin()
    names = column_names(captioners)
    header = ["path"] + names + ([f"{n} top-{top_k}" for n in names] if top_k else [])
    if out is not None and any(os.path.realpath(out) == os.path.realpath(p) for p in paths):
        raise UserError(f"--out {out} is one of the inputs; choose another file.")
    # --out inside a captioned folder: neither it nor its temporary file (CsvOut's .NAME.tmpPID, left out by
    # its pattern so that every process deals the same files) is taken for a photo
    own = os.path.realpath(out) if out is not None else None
    own_tmp = os.path.join(os.path.dirname(own), f".{os.path.basename(own)}.tmp") if own else None

    def ours(path: str) -> bool:
        return own is not None and (path == own or path.startswith(own_tmp))

    if distributed.launched():
        distributed.state()  # join the other processes (gloo on a machine without a GPU)
    rank, world = distributed.rank_and_world()
    main = rank == 0
    sink = CsvOut(out, header, overwrite, write=main)
    skipped, titles = [], {}

    def on_skip(path: str, why: str):
        skipped.append((path, why))
        if main:
            print(f"skipped {printable(Path(path))}: {why}", file=sys.stderr)

    def on_titles(path: str, caps: list[str], alts: list[str]):
        titles[path] = caps
        if not main:
            return
        shown = printable(Path(path))
        if len(caps) == 1:
            echo(f"{shown}: {caps[0]}")
        else:
            for name, title in zip(names, caps):
                echo(f"{shown} [{name}]: {title}")
        sink.row([path, *caps, *alts])

    bar = tqdm(desc="captioning", unit="img", disable=not (progress and main), leave=False, mininterval=1,
               file=sys.stderr)
    try:
        if world == 1:
            for batch in batches(find_images(paths, recursive, ours), batch_size, heic,
                                 lambda item, why: on_skip(str(item.path), why)):
                for row in caption_batch(captioners, batch, preset, top_k, max_new_tokens):
                    on_titles(*row)
                bar.update(len(batch))
                del batch  # only one batch of decoded images is ever held
        else:
            files = find_images(paths, recursive, ours)
            while True:
                deal = list(islice(files, batch_size * world))  # one round: a run of batch_size files each
                events = []  # this process's skips and titles, in file order
                for batch in batches(deal[rank * batch_size:(rank + 1) * batch_size], batch_size, heic,
                                     lambda item, why: events.append(("skip", str(item.path), why))):
                    events += [("titles", *row) for row in caption_batch(captioners, batch, preset, top_k,
                                                                         max_new_tokens)]
                    del batch
                rounds = distributed.gather([(bool(deal), events)])
                for _, part in rounds:
                    for kind, *fields in part:
                        (on_skip if kind == "skip" else on_titles)(*fields)
                    bar.update(sum(kind == "titles" for kind, *_ in part))
                if not any(more for more, _ in rounds):  # every process walked to the end of the files
                    break
    except BaseException:
        sink.finish(keep=False)
        raise
    finally:
        bar.close()
    sink.finish(keep=bool(titles))
    return {"captioned": len(titles), "skipped": skipped, "titles": titles}


def check_run(run, captioner=None) -> dict:
    """Caption a finished run's test images with its best/ model through this command's code (the run's
    batch size, the model's own preset) and compare with its predictions.csv:
    {"run", "same", "total", "differ": [(image, predicted, captioned)]}."""
    import json

    from .captioner import load_captioner
    from .data import read_csv, resolve_image

    run = Path(run)
    cfg = json.loads((run / "config.json").read_text())
    df = read_csv(run / "predictions.csv", required=("Image_Name", "prediction"))
    images = Path(cfg.get("images_dir") or Path(cfg["data_dir"]) / "images")
    paths = [resolve_image(images, n) for n in df["Image_Name"]]
    captioner = captioner or load_captioner(run)
    got = caption_paths([captioner], [str(p) for p in paths if p is not None], batch_size=cfg["batch_size"],
                        echo=lambda line: None, progress=False)["titles"]
    differ = [(n, want, got.get(str(p), ["(not captioned)"])[0])
              for n, want, p in zip(df["Image_Name"], df["prediction"], paths)
              if p is None or got.get(str(p), [None])[0] != want]
    return {"run": run.name, "same": len(df) - len(differ), "total": len(df), "differ": differ}


def parser() -> argparse.ArgumentParser:
    from .generation import PRESETS

    p = argparse.ArgumentParser(prog="python -m captioning.caption", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs")
    p.add_argument("--model", action="append", required=True, metavar="M",
                   help="a run folder, a best/ folder, a task2 run, or a hub id or model folder (repeatable)")
    p.add_argument("--recursive", action="store_true", help="also caption the images in subfolders")
    p.add_argument("--out", metavar="FILE.csv", help="also write path + titles (+ alternatives) to this CSV")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="also give each model's K best titles with their scores (default 0: none)")
    p.add_argument("--preset", choices=list(PRESETS), help="decoding for every model (default: each model's own)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="longest title in tokens (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU if there is one; under accelerate "
                                         "launch, cuda is each process's own GPU)")
    p.add_argument("--hf-token", default="", help="token for gated hub models (default: $HF_TOKEN); never printed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> dict:
    a = parser().parse_args(argv)
    if a.batch_size < 1 or a.top_k < 0 or (a.max_new_tokens is not None and a.max_new_tokens < 1):
        raise UserError("--batch-size and --max-new-tokens must be at least 1, --top-k at least 0.")
    from . import distributed
    from .captioner import load_captioner

    token = hf_token(a.hf_token)
    # under a launcher every process joins the others, then loads each model on its own GPU (default_device)
    main_process = distributed.state().is_main_process if distributed.launched() else True
    captioners = [load_captioner(m, token, a.device) for m in a.model]
    for c in captioners:
        d = c.describe()
        if main_process:
            print(f"{c.name}: {d['family']}, {d['parameters']:,} parameters, preset {a.preset or c.preset}",
                  file=sys.stderr)
    result = caption_paths(captioners, a.paths, a.recursive, a.batch_size, a.preset, a.top_k, a.max_new_tokens,
                           a.out, a.overwrite, progress=not a.quiet)
    n, skipped = result["captioned"], result["skipped"]
    if n == 0:
        raise UserError("nothing to caption: " + ("no file could be read as an image (skips named above)."
                                                  if skipped else "the paths hold no files."))
    if main_process:
        print(f"captioned {n} image(s)" + (f", skipped {len(skipped)}" if skipped else "")
              + (f"; titles written to {a.out}" if a.out else ""), file=sys.stderr)
    return result


if __name__ == "__main__":
    run_main(main)
