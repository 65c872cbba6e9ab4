"""Zero-shot captioning with chat vision-language models (any image-text-to-text model of transformers).

    load_chat_vlm(name)          the model class is looked up from the checkpoint's config (its model_type),
                                 never guessed from the name; the processor pads on the left
    image_datasets(cfg, splits)  the splits as decoded images, unreadable ones skipped (counted and named)
    chat_answers(...)            one batched `generate` over chat turns "image + question"
    clean_title(answer)          what a chat model answers -> a dish title
    load_deepseek_vl_package()   DeepSeek's original `deepseek_vl` package, when it is installed
    ChatVLMCaptioner             the chat-VLM family behind captioning.captioner.load_captioner
"""
from __future__ import annotations

import re

from .captioner import Caption, Captioner, default_device
from .config import UserError
from .data import ImageError, load_image, log, split_records
from .loading import check_local_or_hub, load_error, load_errors
from .text import normalize

DEEPSEEK_VL_INSTALL = "pip install git+https://github.com/deepseek-ai/DeepSeek-VL.git"


# ---------------------------------------------------------------------------------------- data
class ImageDataset:
    """Items of one split as PIL images (the chat processor resizes them itself) + caption + name."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        return {"image": load_image(r.path), "caption": r.title, "references": r.references,
                "image_name": r.image_name, "index": i}


def image_datasets(cfg, splits=("valid", "test")) -> dict:
    """One ImageDataset per split; rows and images that cannot be used are skipped with a named count."""
    out = {}
    for split in splits:
        records, _ = split_records(cfg, split)
        if cfg.limit:
            records = records[: cfg.limit]
        kept, failed = [], []
        for r in records:
            try:
                load_image(r.path)
                kept.append(r)
            except ImageError as e:
                failed.append(f"{r.image_name} ({e})")
        if failed:
            log(f"{split}: skipped {len(failed)} unreadable image(s): {', '.join(failed[:5])}"
                + (", ..." if len(failed) > 5 else ""))
        out[split] = ImageDataset(kept)
    return out


# ------------------------------------------------------------------------------ transformers path
def model_class(config):
    """The image-text-to-text class registered for this config's model_type (None if there is none)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(getattr(config, "model_type", None))
    return getattr(transformers, name) if name else None


def pick_dtype(name: str = "auto"):
    import torch

    if name == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, name)


def load_chat_vlm(name: str, token: str | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                  device_map: str | None = "auto"):
    """(model, processor) of a chat VLM; the class follows the checkpoint's config, not its name.
    On a GPU the layers are placed by `device_map` ("auto": one GPU, or spread over several); training
    passes None and lets accelerate place the model."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    check_local_or_hub(name)
    try:
        config = AutoConfig.from_pretrained(name, token=token, trust_remote_code=trust_remote_code)
    except load_errors() as e:
        raise load_error(name, e) from None
    cls = model_class(config)
    if cls is None and not (trust_remote_code and getattr(config, "auto_map", None)):
        raise UserError(f"{name} is a {config.model_type!r} model, not an image-text-to-text chat model of "
                        "transformers; pass one such as deepseek-community/deepseek-vl-7b-chat.")
    kwargs = {"token": token, "dtype": pick_dtype(dtype), "trust_remote_code": trust_remote_code}
    kwargs.update(placement(device_map))
    try:
        processor = AutoProcessor.from_pretrained(name, token=token, trust_remote_code=trust_remote_code)
    except load_errors() as e:
        raise load_error(name, e) from None
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not getattr(processor, "chat_template", None):
        raise UserError(f"{name} has no chat template in its processor: it is not a chat model.")
    try:
        model = (cls or AutoModelForImageTextToText).from_pretrained(name, config=config, **kwargs).eval()
    except load_errors() as e:
        raise load_error(name, e) from None
    tokenizer.padding_side = "left"  # batched generation continues every row from its last real token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, processor


def conversation(image, question: str) -> list[dict]:
    """One user turn: the image, then the question."""
    content = [{"type": "image", "image": image}, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def chat_answers(model, processor, images, question, scores: bool = False, **generate_kwargs):
    """Raw answers for a batch of images (one question, or one per image): one left-padded `generate`.
    With scores=True (and generate's return_dict_in_generate) also the sequences' scores."""
    import torch

    questions = [question] * len(images) if isinstance(question, str) else list(question)
    inputs = processor.apply_chat_template([conversation(im, q) for im, q in zip(images, questions)],
                                           add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", processor_kwargs={"padding": True})
    inputs = inputs.to(model.device, dtype=model.dtype)  # casts only the floating-point tensors (pixels)
    tok = processor.tokenizer
    with torch.no_grad():
        result = model.generate(**inputs, pad_token_id=tok.pad_token_id, **generate_kwargs)
    out = result.sequences if scores else result
    prompt = inputs["input_ids"].repeat_interleave(len(out) // len(inputs["input_ids"]), 0)  # k answers each
    if out.shape[1] >= prompt.shape[1] and torch.equal(out[:, : prompt.shape[1]], prompt):
        out = out[:, prompt.shape[1]:]  # most VLMs return prompt + answer
    answers = tok.batch_decode(out, skip_special_tokens=True)
    return (answers, result.sequences_scores) if scores else answers


# ------------------------------------------------------------------------------- the family
# The course's question; a saved chat-VLM folder may record its own in its manifest ("question").
DEFAULT_QUESTION = "Put a short title to the dish in this image"


class ChatVLMCaptioner(Captioner):
    """The captioner interface over a chat VLM (DeepSeek-VL, LLaVA, ...): each photo is one chat turn
    "image + question", the answer is cleaned into a title (clean_title). Manifest settings: preset,
    max_new_tokens, question, dtype."""

    family = "chat-vlm"
    default_preset = "greedy"

    def __init__(self, model, processor, source, settings: dict | None = None):
        super().__init__(source, settings)
        self.model, self.processor = model, processor
        self.question = self.settings.get("question", DEFAULT_QUESTION)

    @classmethod
    def load(cls, source, token=None, device=None, settings=None):
        settings = settings or {}
        model, processor = load_chat_vlm(str(source), token, settings.get("dtype", "auto"))
        if getattr(model, "hf_device_map", None) is None:  # device_map="auto" placed it already
            model = model.to(default_device(device))
        return cls(model, processor, source, settings)

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict:
        return {**super().describe(), "model": type(self.model).__name__, "question": self.question}

    def caption(self, images, preset=None, top_k=0, max_new_tokens=None) -> list[Caption]:
        from .generation import generation_kwargs, group_alternatives, top_k_kwargs

        preset, max_new = self._decoding(preset, max_new_tokens)
        images = list(images)
        if not images:
            return []
        answers = chat_answers(self.model, self.processor, images, self.question,
                               **generation_kwargs(preset, max_new))
        alternatives = [[] for _ in answers]
        if top_k > 0:
            texts, scores = chat_answers(self.model, self.processor, images, self.question, scores=True,
                                         max_new_tokens=max_new, **top_k_kwargs(top_k))
            alternatives = group_alternatives([clean_title(t) for t in texts], scores, top_k)
        return [Caption(clean_title(a), alts) for a, alts in zip(answers, alternatives)]


# ------------------------------------------------------------------------- original deepseek_vl
def deepseek_vl_classes():
    """(MultiModalityCausalLM, VLChatProcessor) of DeepSeek's package, or one sentence on installing it."""
    import importlib.util

    try:
        from deepseek_vl.models import MultiModalityCausalLM, VLChatProcessor
    except ImportError as e:
        if importlib.util.find_spec("deepseek_vl") is None or "deepseek_vl" in str(e):
            raise UserError("--backend deepseek_vl needs DeepSeek's original package, which is not on PyPI "
                            "(the 'deepseek-vl' name there is an empty placeholder); install it with "
                            f"{DEEPSEEK_VL_INSTALL}") from None
        raise UserError(f"the deepseek_vl package is installed but does not import ({e}); it was written for "
                        "transformers 4.x: install it in its own environment, or use --backend transformers."
                        ) from None
    return MultiModalityCausalLM, VLChatProcessor


def placement(device_map: str | None = "auto") -> dict:
    """from_pretrained arguments that load the weights once, straight where they run: `device_map` on a GPU
    ("auto": one GPU, or the layers spread over several), this process's own GPU under accelerate launch
    (a copy per GPU), the CPU otherwise; never a full copy in CPU memory first. device_map=None (training)
    leaves the placement to accelerate."""
    import torch

    from . import distributed

    kwargs = {"low_cpu_mem_usage": True}
    if torch.cuda.is_available() and device_map:
        kwargs["device_map"] = {"": str(distributed.device())} if distributed.launched() else device_map
    return kwargs


def load_deepseek_vl_package(name: str, token: str | None = None, dtype: str = "auto"):
    """(model, processor) through DeepSeek's own package (it registers its classes: no remote code)."""
    MultiModalityCausalLM, VLChatProcessor = deepseek_vl_classes()
    check_local_or_hub(name)
    try:
        processor = VLChatProcessor.from_pretrained(name, token=token)
        model = MultiModalityCausalLM.from_pretrained(name, token=token, torch_dtype=pick_dtype(dtype), **placement())
    except load_errors() as e:
        raise load_error(name, e) from None
    return model.eval(), processor


def deepseek_vl_answers(model, processor, images, question: str, **generate_kwargs) -> list[str]:
    """Raw answers through the original package: its own chat format, left-padded batch."""
    import torch

    turns = [{"role": "User", "content": "<image_placeholder>" + question},
             {"role": "Assistant", "content": ""}]
    batch = processor.batchify([processor.process_one(conversations=turns, images=[im]) for im in images])
    batch = batch.to(model.device, dtype=next(model.parameters()).dtype)
    tok = processor.tokenizer
    with torch.no_grad():
        embeds = model.prepare_inputs_embeds(**batch)
        out = model.language_model.generate(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                            pad_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                            eos_token_id=tok.eos_token_id, **generate_kwargs)
    return tok.batch_decode(out, skip_special_tokens=True)


# ------------------------------------------------------------------------------ answer -> title
# " for the dish in this image"
_ABOUT = r"(?:\s+(?:for|of)\s+(?:the|this)\s+\w+(?:\s+in\s+(?:the|this)\s+\w+)?)?"
_COULD_BE = r"(?:(?:could|would|might)\s+be|is)"
_LOOKS = r"(?:is|appears\s+to\s+be|looks\s+like|seems\s+to\s+be)"
_LEAD_INS = [  # what chat models put before the title; removed from the start, repeatedly
    r"(?:sure(?:\s+thing)?|certainly|of\s+course|okay|ok|absolutely)[!,.]+",
    r"(?:assistant|answer|response)\s*:",
    r"(?:based\s+on|looking\s+at)\s+(?:the|this)\s+(?:image|picture|photo)\s*,",
    rf"here(?:'s|\s+is|\s+are)\s+(?:\w+\s+){{0,4}}?(?:title|name|caption)s?{_ABOUT}\s*{_COULD_BE}?\s*[:\-]?",
    rf"(?:\w+\s+){{0,3}}?(?:title|name|caption){_ABOUT}\s*{_COULD_BE}?\s*[:\-]",  # "Dish name:"
    rf"(?:\w+\s+){{0,3}}?(?:title|name|caption){_ABOUT}\s+{_COULD_BE}\b",  # "A good title would be"
    r"i\s+would\s+(?:call|title|name)\s+(?:it|this(?:\s+dish)?)\s*:?",
    (r"(?:the\s+|this\s+)?(?:dish|food|meal|recipe)(?:\s+(?:shown|pictured))?"
     rf"(?:\s+in\s+(?:the|this)\s+(?:image|picture|photo))?\s+{_LOOKS}(?:\s+(?:called|named|known\s+as))?\b"),
    rf"(?:this|it)\s+{_LOOKS}(?:\s+(?:called|named))?\b",
    r"(?:the\s+)?(?:image|picture|photo)\s+(?:shows|features|depicts|contains)\b",
]
_LEAD_IN = re.compile(r"^\s*(?:" + "|".join(_LEAD_INS) + r")\s*", re.IGNORECASE)
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|(?<!\w)'([^']+)'(?!\w)|‘([^’]+)’")
_SENTENCE_END = re.compile(r"(?<!\bSt)(?<!\bMr)(?<!\bMrs)(?<!\bDr)(?<!\bNo)[.!?](?:\s+|$)")
_DASH_TAIL = re.compile(r"\s+[–—]\s+.*$|\s+-\s+(?=[a-z]).*$|\s*\((?=[a-z]).*$")


def clean_title(answer) -> str:
    """Reduce a chat model's answer to a title.

    '**Title:** "Lemon Tart". A tangy dessert ...'  ->  'Lemon Tart';
    'The dish in this image is a chocolate lava cake.'  ->  'chocolate lava cake'.
    Handles markdown (bold, headings, bullets, numbered lists), lead-in lines ending in ':',
    quotes, 'Title:' labels, trailing sentences and dash/parenthesis explanations.
    """
    text = str(answer or "").replace("\r", "")
    text = re.sub(r"[*_`]{1,3}|^#+\s*", "", text, flags=re.MULTILINE)  # markdown emphasis, code, headings
    lines = [re.sub(r"^\s*(?:[-•]|\d+[.)])\s+", "", ln).strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    while len(lines) > 1 and lines[0].endswith(":"):  # "Sure! Here is a title for the dish:"
        lines.pop(0)
    line = first = lines[0] if lines else ""
    for _ in range(4):
        stripped = _LEAD_IN.sub("", line, count=1)
        if stripped == line:
            break
        line = stripped
    lead_in = line != first  # in "... is a chocolate cake" the article belongs to the sentence
    quoted = _QUOTED.search(line)
    if quoted:
        line = next(g for g in quoted.groups() if g)
    line = _SENTENCE_END.split(line, maxsplit=1)[0]
    line = _DASH_TAIL.sub("", line)
    line = line.strip(" \t\"'“”‘’:;,.-")
    if lead_in and not quoted:
        line = re.sub(r"^(?:an?|the)\s+(?=\w)", "", line, flags=re.IGNORECASE)
    return normalize(line.strip(" \t\"'“”‘’:;,.!?-"))
