"""Dataclass configs that are also command lines, and the error handling every entry point shares.

A script declares `@dataclass class Config` with a comment above (or beside) each field;
`parse_config(Config)` turns every field into `--field value` (`--flag/--no-flag` for booleans),
accepts `--config file.json` (CLI flags win over the file), and shows the comments in `--help`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import os
import re
import sys
import typing
from pathlib import Path

SECRET_FIELDS = re.compile(r"(^|_)token$|password|secret|api_key", re.I)  # hf_token, not max_new_tokens


class UserError(Exception):
    """A problem with the user's input: printed as one sentence, exit code 2, no traceback."""


def keep_compile_cache_in_ours() -> None:
    """torch makes its compile cache ($TMPDIR/torchinductor_<user>) as soon as transformers is imported:
    keep it in our cache folder, so a run writes only there and into its output folder. Called when this
    module is imported (a script imports captioning before the modules that import transformers at
    their top) and again by run_main."""
    cache = os.environ.get("FOODCAP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "foodcap")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache, "torchinductor"))


keep_compile_cache_in_ours()


def run_main(fn, *args):
    """Call fn(*args); turn user errors into one line on stderr and exit code 2."""
    quiet_libraries()
    keep_compile_cache_in_ours()
    try:
        return fn(*args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"error: cannot use {e.filename}: {e.strerror.lower()}.", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno == 28:  # ENOSPC
            print(f"error: no space left on device while writing {e.filename or ''}.", file=sys.stderr)
            sys.exit(2)
        raise


def quiet_libraries() -> None:
    """Keep the libraries' chatter (weight-loading bars, advisory warnings) out of a script's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    # peft (0.21) still asks transformers 5 for a renamed attribute on every LoRA wrap; nothing to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass


@functools.cache  # a process setting: once is enough, however many models load
def keep_freed_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the system; True if set.

    glibc's malloc returns big freed blocks to the system (they are mapped, or trimmed off the heap) and
    maps fresh, zeroed pages on the next allocation. A batched beam search allocates tens of MB per token
    (the vocabulary scores of every beam): the caption command at batch 32 took 350,000 page faults a
    batch, ~8% of its time; a CPU training step at ViT-B widths 250,000, ~15% of it. Raising both
    thresholds keeps those blocks for reuse: the process's memory stays at its high-water mark instead of
    growing and shrinking every step. Only the allocator's bookkeeping changes, never a result.
    load_captioner and engine.make_accelerator (CPU) call it. glibc only (Linux); elsewhere a no-op."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    # in this order: a trim threshold alone also stops glibc raising its mmap threshold, so every block
    # over 128 KB would be mapped and unmapped (several times slower than the default)
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


def choice(*options, doc: str | None = None):
    """A string field restricted to `options`; the first is the default."""
    return dataclasses.field(default=options[0], metadata={"choices": options, "doc": doc})


def _field_comments(cls) -> dict[str, str]:
    """Map field name -> the comment block above it plus its inline comment."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        block: list[str] = []
        for line in lines:
            s = line.strip()
            m = re.match(r"^(\w+)\s*:\s*[^=#]+(?:=.*)?$", s)
            if s.startswith("#"):
                block.append(s.lstrip("#").rstrip())
            elif m and not s.startswith(("def ", "class ")):
                inline = ""
                if "  # " in line:
                    inline = line.split("  # ", 1)[1].strip()
                text = "\n".join(b for b in block if b.strip())
                text = (text + ("\n" if text and inline else "") + inline).strip()
                if text or m.group(1) not in out:  # a field redefined without a comment keeps its base's text
                    out[m.group(1)] = text
                block = []
            else:
                block = []
    return out


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp


def build_parser(cls, doc: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    p = argparse.ArgumentParser(prog=prog, description=doc,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", metavar="FILE.json",
                   help="read field values from a JSON object (flags given here win)")
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = (f.metadata.get("doc") or comments.get(f.name, "")).replace("%", "%%")
        show = "<from HF_TOKEN>" if SECRET_FIELDS.search(f.name) else default
        help_ = f"{text}\n(default: {show!r})" if text else f"(default: {show!r})"
        kw = dict(dest=f.name, default=default, help=help_)
        flags = (flag, *f.metadata.get("aliases", ()))  # older names of a renamed option keep working
        if tp is bool:
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(tp) in (list, tuple):
            (inner,) = typing.get_args(tp)[:1] or (str,)
            p.add_argument(*flags, nargs="*", type=inner, metavar=f.name.upper(), **kw)
        else:
            choices = f.metadata.get("choices")
            p.add_argument(*flags, type=tp, choices=choices, metavar=f.name.upper() if not choices else None,
                           **kw)
    return p


def parse_config(cls, argv=None, doc: str | None = None, prog: str | None = None):
    """Parse `argv` (default sys.argv[1:]) into an instance of dataclass `cls`."""
    parser = build_parser(cls, doc, prog)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        path = Path(pre.config)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"config file {path} is not valid JSON ({e}).") from None
        if not isinstance(values, dict):
            raise UserError(f"config file {path} must hold a JSON object of field values.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"config file {path} has unknown field(s): {', '.join(unknown)}.")
        for f in dataclasses.fields(cls):
            choices = f.metadata.get("choices")
            if f.name in values and choices and values[f.name] not in choices:
                raise UserError(f"{f.name} must be one of {', '.join(choices)}; got {values[f.name]!r}.")
        parser.set_defaults(**values)
    ns = parser.parse_args(argv)
    kwargs = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)}
    for name, low in MINIMUMS.items():
        if name in kwargs and isinstance(kwargs[name], (int, float)) and kwargs[name] < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}; got {kwargs[name]}.")
    return cls(**kwargs)


def check_folders(data_dir: Path, images_dir: Path | None) -> None:
    """UserError unless the data folder (and the images folder, when given) exist (data.load_split too)."""
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist.")
    if images_dir is not None and not images_dir.is_dir():
        raise UserError(f"images folder {images_dir} does not exist (set --images-dir).")


def preflight(cfg) -> None:
    """A training run's data folders and output folder checked before anything loads (every training
    script calls it right after parse_config; parsing itself checks no folder): a typo in
    --data-dir, or a finished run in --output-dir, is one sentence at once, not after minutes of loading
    a 7B model. (The same checks run again where the data and the run folder are opened.)"""
    if not cfg.dataset:  # a --dataset is laid out (maybe downloaded) where the data is read, not here
        data = Path(cfg.data_dir)
        check_folders(data, Path(cfg.images_dir) if cfg.images_dir else data / "images")
    refuse_clobber(Path(cfg.output_dir), cfg.overwrite, cfg.resume, resumable=True)


# What a run folder holds (captioning.engine.Run); any of them but config.json marks a run there
RUN_FILES = ("config.json", "log.jsonl", "metrics.json", "predictions.csv", "predictions_valid.csv",
             "checkpoint", "best", "curves.png")


def refuse_clobber(folder: Path, overwrite: bool, resume: bool, resumable: bool) -> None:
    """UserError when `folder` holds a run that this one must not replace (without --overwrite) or has
    nothing to resume."""
    present = [f for f in RUN_FILES if (folder / f).exists()]
    finished = (folder / "metrics.json").exists()
    # config.json alone is what a start that failed before any work leaves behind: reuse it
    if [f for f in present if f != "config.json"] and not resume and not overwrite:
        unfinished = "an unfinished run" + (" (pass --resume to continue it)" if resumable else "")
        raise UserError(f"{folder} already holds {'a finished run' if finished else unfinished}; "
                        "pass --overwrite to replace it or choose another --output-dir.")
    if resume and finished and not overwrite:
        raise UserError(f"{folder} holds a finished run: nothing to resume.")


# Lower bounds checked for every config that has these fields.
MINIMUMS = {"batch_size": 1, "max_new_tokens": 1, "limit": 0, "workers": 0, "epochs": 0, "lr": 1e-12,
            "grad_accum": 1, "eval_every": 1, "restart_epochs": 1, "max_length": 2, "patience": 0,
            "weight_decay": 0, "max_grad_norm": 0, "process_timeout": 1, "bertscore_layer": 0}


def to_dict(cfg, redact: bool = True) -> dict:
    """Config as a plain dict for config.json; secrets (tokens) are never written."""
    d = dataclasses.asdict(cfg)
    if redact:
        for k in list(d):
            if SECRET_FIELDS.search(k):
                d[k] = "<redacted>" if d[k] else d[k]
    return d


def hf_token(value: str | None = None) -> str | None:
    """The Hugging Face token: the flag's value, else $HF_TOKEN, else None. Never print it."""
    return value or os.environ.get("HF_TOKEN") or None


# ------------------------------------------------------------------- fields every recipe shares
@dataclasses.dataclass
class DataConfig:
    # Folder holding train_data.csv, valid_data.csv and test_data.csv
    data_dir: str = "data"
    # Folder holding the images (empty: DATA_DIR/images)
    images_dir: str = ""
    # Instead of DATA_DIR: a Hugging Face dataset, by hub id or a local `imagefolder` (metadata.csv with
    # file_name,Title in train/, validation/, test/); read with the `datasets` library (captioning.data)
    dataset: str = ""


@dataclasses.dataclass
class RunConfig(DataConfig):
    # Model: a Hugging Face hub id or a local folder written by save_pretrained
    model: str = "nlpconnect/vit-gpt2-image-captioning"
    # Where this run writes config.json, log.jsonl, metrics.json, predictions.csv, best/, checkpoint/
    output_dir: str = "runs/run"
    # Seed for the split order, initialisation, dropout and sampling
    seed: int = 42
    # Images per batch (global: split across processes under accelerate launch)
    batch_size: int = 32
    # Decoding for the reported numbers: "beam" (4 beams), "greedy", or "nucleus" (top-p sampling)
    preset: str = choice("beam", "greedy", "nucleus")
    # Longest generated caption, in tokens (at least a training run's MAX_LENGTH, or long titles are cut)
    max_new_tokens: int = 32
    # Use only the first N rows of each split (0 = all); for quick checks
    limit: int = 0
    # Worker processes for image decoding and the DataLoader
    workers: int = 2
    # Cache folder for decoded pixels and frozen features (empty: $FOODCAP_CACHE or ~/.cache/foodcap)
    cache_dir: str = ""
    # Hugging Face token for gated models (empty: $HF_TOKEN); never printed or saved
    hf_token: str = ""
    # Replace an existing run in OUTPUT_DIR (otherwise the program refuses to touch it)
    overwrite: bool = False
    # Several processes (accelerate launch, torchrun): minutes a process waits for the others (a cache being
    # built, a best model being saved) before the run is stopped
    process_timeout: int = 60
    # CLIP model for CLIPScore and RefCLIPScore in the final evaluation: a hub id or a local folder
    # ("" = leave them out; one that cannot be loaded offline is skipped, with the reason, in metrics.json)
    clip_model: str = "openai/clip-vit-base-patch32"
    # Model for BERTScore F1 against the references ("" = leave it out); the paper's default
    bertscore_model: str = "roberta-large"
    # Its layer whose token embeddings are matched (0 = bert-score's recommended one; a local folder: the last)
    bertscore_layer: int = 0
    # Rescale BERTScore with the model's baseline (bert-score's file, or bertscore_baseline.tsv in a folder)
    bertscore_rescale: bool = True


@dataclasses.dataclass
class TrainConfig(RunConfig):
    # Passes over the training split
    epochs: int = 10
    # Peak learning rate of AdamW (1e-5..1e-4 suits pretrained checkpoints; tiny random models need ~2e-3)
    lr: float = 5e-5
    # AdamW weight decay
    weight_decay: float = 0.01
    # Cosine annealing with warm restarts: length of the first cycle, in epochs
    restart_epochs: int = 2
    # Accumulate gradients over this many batches before each optimiser step
    grad_accum: int = 1
    # Clip the gradient norm to this value (0 = no clipping)
    max_grad_norm: float = 1.0
    # Tokens per training caption, EOS included (longer titles are cut)
    max_length: int = 32
    # Validate (free-running generation on the valid split) every N epochs, and after the last
    eval_every: int = 1
    # Decoding used for validation during training (cheaper than the final preset)
    eval_preset: str = choice("greedy", "beam", "nucleus")
    # Validation metric that selects the best epoch and drives early stopping
    monitor: str = choice("CIDEr", "BLEU-4", "BLEU-1", "BLEU-2", "METEOR", "ROUGE-L")
    # Stop after this many validations without improvement (0 = never stop early)
    patience: int = 3
    # Continue the unfinished run in OUTPUT_DIR from its last checkpoint
    resume: bool = False
    # "auto" = bf16 on a GPU that supports it, else full precision
    mixed_precision: str = choice("auto", "no", "bf16", "fp16")
    # Also log to "tensorboard" or "wandb" (each needs its package installed)
    report_to: str = choice("none", "tensorboard", "wandb")
