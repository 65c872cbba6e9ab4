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
    """A path-like name that does not exist is a typo, not a hub id: say so early. So is a hub id that
    is not in the Hugging Face cache when it cannot be downloaded: offline (HF_HUB_OFFLINE), with the
    doctor's fix; online, when one quick request cannot reach the hub (from_pretrained would retry for
    half a minute and end in raw connection errors)."""
    p = Path(name)
    if (name.startswith((".", "/", "~")) or p.exists() or name.count("/") > 1) and not p.exists():
        raise UserError(f"model folder {name} does not exist.")
    if p.exists() or _cached(name) is not False:
        return
    from .doctor import offline

    fix = f"download it once on a machine with internet: hf download {name}"
    if offline():
        raise UserError(f"model {name} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: {fix} "
                        "(or unset HF_HUB_OFFLINE to download it on first use).")
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    from .config import hf_token

    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"), token=hf_token(), timeout=5)
    except HfHubHTTPError:  # the hub answered (gated, unknown id, ...): from_pretrained says which
        return
    except Exception as e:  # refused, DNS, proxy, timeout
        raise UserError(f"model {name} is not in the Hugging Face cache and the hub cannot be reached "
                        f"({type(e).__name__}): check the network or proxy (HTTPS_PROXY), or {fix} and copy "
                        "the cache here.") from None


def _cached(name: str) -> bool | None:
    """Whether hub id `name` has its config.json in the Hugging Face cache (None: not a hub id)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id: from_pretrained's error says so
        return None
