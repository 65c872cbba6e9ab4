"""What goes wrong when a model is loaded, said in one sentence.

    check_local_or_hub(name)     a path-like name that does not exist stops here (a typo, not a hub id)
    try: ...from_pretrained(name)
    except load_errors() as e: raise load_error(name, e) from None

A leaf module: every family (captioning.models, captioning.prefix_llm, captioning.vlm, ...) and the
engine use it, and it imports nothing of theirs.
"""
from __future__ import annotations

from pathlib import Path

from .config import UserError


def load_errors() -> tuple:
    """What from_pretrained raises on a folder or file that is not a usable model: besides the usual
    OSError/ValueError, pickled weights that torch.load(weights_only=True) refuses to unpickle and
    safetensors files that are cut short or not safetensors at all."""
    import pickle

    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError, SafetensorError)


def load_error(name, e: Exception) -> UserError:
    """The one sentence for a failed load of `name` (a folder, file or hub id)."""
    import pickle

    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    p = Path(name)
    if p.is_file():
        return UserError(f"{name} is a file, not a model folder; pass a folder written by save_pretrained "
                         "or a hub id.")
    if isinstance(e, pickle.UnpicklingError):
        return UserError(f"refusing to load the weights in {name}: they are a pickle that holds more than "
                         "tensors (possibly code); use a model saved as safetensors.")
    if type(e).__name__ == "SafetensorError":
        return UserError(f"the weights in {name} are damaged or not safetensors ({first[:120]}).")
    if p.exists() and not (p / "config.json").exists():
        return UserError(f"{name} is a folder but holds no model (no config.json); "
                         "pass a folder written by save_pretrained or a hub id.")
    return UserError(f"cannot load model {name!r}: it is neither a model folder nor a hub id that "
                     f"can be downloaded or found in the cache ({first[:160]}).")


def check_local_or_hub(name: str) -> None:
    """A path-like name that does not exist is a typo, not a hub id: say so early."""
    p = Path(name)
    if (name.startswith((".", "/", "~")) or p.exists() or name.count("/") > 1) and not p.exists():
        raise UserError(f"model folder {name} does not exist.")
