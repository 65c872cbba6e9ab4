"""One interface for every kind of captioner, a registry of families, and `load_captioner`.

    from captioning.captioner import load_captioner
    cap = load_captioner("runs/vit_gpt2_finetuned")          # a run folder, its best/, a hub id, ...
    for c in cap.caption(pil_images, top_k=3):               # the model's own decoding preset
        print(c.title, c.alternatives)                       # [(title, score), ...] best first
    print(cap.describe())                                    # {"family": ..., "source": ..., ...}

Contract of a family (what a new one implements; see captioning.models for a short example)
-------------------------------------------------------------------------------------------
A family is a subclass of `Captioner` registered here under a name:

    register(Family("blip", "captioning.blip:BlipCaptioner", model_types=("blip",)))

- `Family.target` is "module:Class", imported only when a model of that family is loaded, so this
  module stays a leaf: it imports nothing of the package but `config`, and any family module may
  import it.
- `Class.load(folder_or_id, token=None, device=None, settings=None)` -> an instance, on `device`
  (default: the GPU if there is one), in eval mode. `settings` is the "settings" object of the
  folder's manifest ({} when there is none). Failures are one-sentence `UserError`s
  (captioning.loading turns from_pretrained's exceptions into them).
- `caption(images, preset=None, top_k=0, max_new_tokens=None)` -> one `Caption` per PIL image, in
  order. Images arrive as 8-bit RGB (captioning.data.load_image makes them so: EXIF-rotated, alpha on
  white); the family does its own resizing (captioning.imaging.square_pixels, the pixel cache's
  resize, so titles equal the ones the run was scored on; `self.autocast(device)` decodes in the
  run's precision). `preset` is a name from
  captioning.generation.PRESETS; None means the model's own (`self.preset`, from the manifest).
  With top_k > 0 each Caption also carries up to k alternatives, best first, each with a score
  (generation.top_k_captions: a k-beam search, score = mean log-probability per token, 0 = certain).
  One call is one batch: callers choose the batch size.
- `describe()` -> a JSON-able dict: at least family, source, name, preset, max_new_tokens, parameters.
- `save(folder)` (families that train) writes the weights and the manifest (`write_manifest`).

Which family a folder belongs to (`resolve`, no name sniffing)
---------------------------------------------------------------
1. A run folder (it holds best/) stands for its best/ model.
2. A folder with a manifest, `captioner.json` = {"family": NAME, "format": N, "settings": {...}},
   belongs to that family. Every folder this project saves carries one. A format newer than FORMAT
   (written by a newer version) is refused with one sentence.
3. Older folders without a manifest are recognised by what they contain: a marker file that only
   one family writes (`Family.markers`, e.g. task2's anymodal.json), else config.json's model_type:
   first a family that lists it exactly (`Family.model_types`), then one whose rule accepts it
   (`Family.accepts`, e.g. every image-text-to-text model of transformers is a chat VLM).
4. A hub id: its config's model_type, as in 3.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from .config import UserError, keep_freed_memory

MANIFEST = "captioner.json"
FORMAT = 1  # raise when a manifest's meaning changes; older formats stay readable


@dataclass
class Caption:
    title: str
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # (title, score), best first


class Captioner:
    """The interface every family implements (see the module docstring)."""

    family: ClassVar[str] = ""
    default_preset: ClassVar[str] = "beam"

    def __init__(self, source: str, settings: dict | None = None):
        settings = settings or {}
        self.source = str(source)
        self.name = display_name(source)
        self.settings = settings
        self.preset = settings.get("preset", self.default_preset)
        self.max_new_tokens = int(settings.get("max_new_tokens", 24))

    @classmethod
    def load(cls, source, token: str | None = None, device=None, settings: dict | None = None) -> "Captioner":
        raise NotImplementedError

    def caption(self, images, preset: str | None = None, top_k: int = 0,
                max_new_tokens: int | None = None) -> list[Caption]:
        raise NotImplementedError

    def parameters(self) -> int:
        return 0

    def describe(self) -> dict:
        return {"family": self.family, "name": self.name, "source": self.source, "preset": self.preset,
                "max_new_tokens": self.max_new_tokens, "parameters": self.parameters()}

    def save(self, folder) -> None:
        raise UserError(f"a {self.family} captioner cannot be saved.")

    def _decoding(self, preset, max_new_tokens) -> tuple[str, int]:
        return preset or self.preset, int(max_new_tokens or self.max_new_tokens)

    def autocast(self, device):
        """The autocast the run was scored under (manifest setting "autocast": "bf16"/"fp16"), else none,
        so a photo gets the title the run's predictions.csv holds for it."""
        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.settings.get("autocast"))
        return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def default_device(device=None):
    """`device` if given, else the GPU when there is one, else the CPU. Under a launcher with several
    processes (accelerate launch, torchrun) "cuda" and the default GPU mean this process's own,
    cuda:LOCAL_RANK, where accelerate places it (read from the launcher's environment: this leaf module
    imports nothing of torch.distributed)."""
    import torch

    d = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.type == "cuda" and d.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        d = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return d


def display_name(source) -> str:
    """A short label for tables and the web page: the run's name for runs/<run>/best, else the folder's
    name, else the hub id."""
    p = Path(str(source))
    if p.exists():
        p = p.resolve()
        return p.parent.name if p.name == "best" else p.name
    return str(source)


# ------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Family:
    name: str
    target: str  # "module:Class", imported when first used
    markers: tuple[str, ...] = ()  # files that only this family's folders hold
    model_types: tuple[str, ...] = ()  # config.json model_type values it loads
    accepts: Callable[[str], bool] | None = None  # a rule over model types, tried after exact matches


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
    FAMILIES[family.name] = family


def family_class(name: str) -> type[Captioner]:
    if name not in FAMILIES:
        raise UserError(f"unknown captioner family {name!r}; known: {', '.join(FAMILIES)}.")
    module, _, cls = FAMILIES[name].target.partition(":")
    return getattr(importlib.import_module(module), cls)


def _image_text_to_text(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


register(Family("vision-encoder-decoder", "captioning.models:VisionEncoderDecoderCaptioner",
                model_types=("vision-encoder-decoder",)))
register(Family("prefix-llm", "captioning.prefix_llm:PrefixLLMCaptioner", markers=("anymodal.json",)))
register(Family("chat-vlm", "captioning.vlm:ChatVLMCaptioner", accepts=_image_text_to_text))
register(Family("chat-vlm-lora", "captioning.vlm_lora:ChatLoRACaptioner", markers=("vlm_lora.json",)))
register(Family("blip", "captioning.blip:BlipCaptioner", model_types=("blip",)))
register(Family("retrieval", "captioning.retrieval:RetrievalCaptioner", markers=("retrieval.json",)))


# ------------------------------------------------------------------------------------- manifest
def write_manifest(folder, family: str, **settings) -> None:
    """Write captioner.json into a saved model folder (atomically)."""
    path = Path(folder) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"family": family, "format": FORMAT, "settings": settings}, indent=2))
    os.replace(tmp, path)


def read_manifest(folder) -> dict | None:
    """The manifest of a folder ({"family", "format", "settings"}), None when it has none."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}).") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("family"), str):
        raise UserError(f"{path} does not name a captioner family.")
    if not isinstance(obj.get("format", 1), int) or obj.get("format", 1) > FORMAT:
        raise UserError(f"{path} was written by a newer version of this toolkit (format "
                        f"{obj.get('format')!r}; this one reads up to {FORMAT}): update it.")
    if not isinstance(obj.get("settings", {}), dict):
        raise UserError(f"{path} has settings that are not an object.")
    return {"family": obj["family"], "format": obj.get("format", 1), "settings": obj.get("settings", {})}


# ------------------------------------------------------------------------------------ resolving
RUN_SIGNS = ("metrics.json", "log.jsonl", "checkpoint", "predictions.csv")


def model_folder(path) -> Path:
    """A run folder -> its best/; any other folder as it is."""
    p = Path(path)
    if (p / "best").is_dir():
        return p / "best"
    if any((p / s).exists() for s in RUN_SIGNS) and not (p / MANIFEST).exists():
        raise UserError(f"{p} is a run folder without a best/ model (the run saved none: did it finish?).")
    return p


def _by_model_type(model_type, where: str) -> str:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam.name
    for fam in FAMILIES.values():
        if fam.accepts is not None and isinstance(model_type, str) and fam.accepts(model_type):
            return fam.name
    raise UserError(f"{where} is a {model_type!r} model, which no captioner family loads "
                    f"(known families: {', '.join(FAMILIES)}).")


def resolve(path_or_id: str, token: str | None = None) -> tuple[str, str, dict]:
    """(family name, folder or hub id to load, manifest settings) for anything load_captioner accepts."""
    name = str(path_or_id)
    p = Path(name).expanduser()
    if p.is_file():
        raise UserError(f"{name} is a file, not a model folder; pass a run folder, its best/ folder or a hub id.")
    if p.is_dir():
        p = model_folder(p)
        manifest = read_manifest(p)
        if manifest is not None:
            family_class(manifest["family"])  # an unknown family stops here, with the known ones
            return manifest["family"], str(p), manifest["settings"]
        for fam in FAMILIES.values():
            if any((p / m).exists() for m in fam.markers):
                return fam.name, str(p), {}
        cfg = p / "config.json"
        try:
            model_type = json.loads(cfg.read_text()).get("model_type") if cfg.exists() else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            raise UserError(f"{cfg} is damaged: not a JSON object.") from None
        if model_type is None:
            raise UserError(f"{p} holds no captioner this toolkit knows (no {MANIFEST}, no model "
                            "config.json); pass a run folder, its best/ folder or a hub id.")
        return _by_model_type(model_type, str(p)), str(p), {}
    from .loading import check_local_or_hub, load_error, load_errors

    check_local_or_hub(name)
    try:
        from transformers import PretrainedConfig

        config, _ = PretrainedConfig.get_config_dict(name, token=token)
    except load_errors() as e:
        raise load_error(name, e) from None
    return _by_model_type(config.get("model_type"), name), name, {}


def load_captioner(path_or_id, token: str | None = None, device=None) -> Captioner:
    """The captioner behind anything this project writes or uses: a run folder, its best/, a task2
    run, a VisionEncoderDecoder or chat-VLM hub id or folder (see the module docstring)."""
    family, source, settings = resolve(str(path_or_id), token)
    keep_freed_memory()  # batched captioning allocates and frees tens of MB per token: no page faults
    captioner = family_class(family).load(source, token=token, device=device, settings=settings)
    if Path(str(path_or_id)).exists():
        captioner.name = display_name(path_or_id)
    return captioner
