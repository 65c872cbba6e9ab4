"""The prefix-embedding multimodal captioner (in the style of the AnyModal framework).

Every sequence the LLM sees is   [BOS] [projected image tokens] [prompt] [caption] [EOS]
built as embeddings (`inputs_embeds`). Training puts labels on the caption and its EOS only
(-100 on the image, the prompt and the padding; padding is marked by the attention mask, so an
EOS that shares the pad id is still a target). Generation runs batched from the embeddings of
[BOS][image][prompt], left-padded when prompts differ in length, with the KV cache; position ids
follow the attention mask so a padded row sees the same positions as an unpadded one.

A trained captioner is saved as a folder: adapter/ (peft, safetensors), projector.safetensors,
tokenizer/, and anymodal.json (what is needed to rebuild it: base LLM, vision encoder and the
fingerprint of its weights, projector shape, prompt).
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import nn

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # task2's modules import each other, however the script was started
    sys.path.insert(0, _HERE)

from captioning.config import UserError  # noqa: E402
from captioning.engine import Recipe  # noqa: E402
from captioning.generation import decode, generation_kwargs  # noqa: E402
from captioning.models import _load_errors  # noqa: E402
from llm import get_llm  # noqa: E402
from vision import Projector  # noqa: E402

SETTINGS_FILE = "anymodal.json"


class AnyModalCaptioner(nn.Module):
    def __init__(self, llm, tokenizer, projector, settings: dict):
        super().__init__()
        self.llm, self.projector, self.tokenizer, self.settings = llm, projector, tokenizer, settings
        self.prompt = settings.get("prompt", "")
        self.max_length = int(settings.get("max_length", 32))
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.stats = Counter()  # captions generated / of them ended by EOS

    # ----------------------------------------------------------------------------------- inputs
    def _embed(self, ids: list[int], device) -> torch.Tensor:
        return self.llm.get_input_embeddings()(torch.tensor(ids, dtype=torch.long, device=device))

    def prefix(self, features: torch.Tensor, prompts: list[str] | None = None):
        """Embeddings and mask of [BOS][image][prompt] per image, left-padded to one length."""
        image = self.projector(features)
        dtype, device = self.llm.get_input_embeddings().weight.dtype, image.device
        prompts = prompts or [self.prompt] * len(image)
        rows = []
        for img, prompt in zip(image, prompts):
            # the prompt's trailing space moves to the caption, so words tokenize as in running text
            ids = self.tokenizer(prompt.rstrip(), add_special_tokens=False)["input_ids"]
            rows.append(torch.cat([self._embed(self.bos, device), img.to(dtype), self._embed(ids, device)]))
        width = max(len(r) for r in rows)
        embeds = image.new_zeros((len(rows), width, rows[0].shape[-1]), dtype=dtype)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            embeds[i, width - len(r):], mask[i, width - len(r):] = r, 1
        return embeds, mask

    def targets(self, captions: list[str], device):
        """Caption ids + EOS, right-padded: (ids, mask, labels with -100 on padding)."""
        ids = self.tokenizer([" " + c for c in captions], add_special_tokens=False)["input_ids"]
        seqs = [x[: self.max_length - 1] + [self.eos_id] for x in ids]
        width = max(len(s) for s in seqs)
        out = torch.full((len(seqs), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(out)
        for i, s in enumerate(seqs):
            out[i, : len(s)], mask[i, : len(s)] = torch.tensor(s, device=device), 1
        return out, mask, out.masked_fill(mask == 0, -100)

    def forward(self, features: torch.Tensor, captions: list[str], prompts: list[str] | None = None):
        """Mean cross-entropy of the captions (and their EOS) given the images."""
        embeds, mask = self.prefix(features, prompts)
        ids, cap_mask, labels = self.targets(captions, embeds.device)
        embeds = torch.cat([embeds, self.llm.get_input_embeddings()(ids)], 1)
        mask = torch.cat([mask, cap_mask], 1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        # Logits only where a caption token (or its EOS) is predicted: the prefix's last position and the
        # caption's. The image and prompt positions carry no loss, and the vocabulary projection over
        # them (128k words for Llama 3.2, ~200 image positions) would be a fifth of the LLM's work.
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                          logits_to_keep=ids.shape[1] + 1).logits[:, :-1]
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

    # ------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, features, preset: str = "greedy", max_new_tokens: int = 24, prompts=None, **overrides):
        """New token ids for a batch of images (one row each, padded after EOS)."""
        embeds, mask = self.prefix(features, prompts)
        kwargs = generation_kwargs(preset, max_new_tokens, **overrides)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, eos_token_id=self.eos_id,
                                 pad_token_id=self.pad_id, **kwargs)

    def caption(self, features, preset: str = "greedy", max_new_tokens: int = 24, prompts=None) -> list[str]:
        out = self.generate(features, preset, max_new_tokens, prompts)
        self.stats["captions"] += len(out)
        self.stats["ended_with_eos"] += int((out == self.eos_id).any(1).sum())
        return decode(self.tokenizer, out)

    # --------------------------------------------------------------------------------- save/load
    def save(self, folder) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.llm.save_pretrained(folder / "adapter")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()},
                  folder / "projector.safetensors")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        (folder / SETTINGS_FILE).write_text(json.dumps(self.settings, indent=2))

    @classmethod
    def load(cls, folder, token: str | None = None, llm_name: str | None = None) -> "AnyModalCaptioner":
        """Rebuild a saved captioner: base LLM (`llm_name` overrides the recorded one), adapter, projector."""
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        folder = Path(folder)
        if (folder / "best" / SETTINGS_FILE).exists():
            folder = folder / "best"  # a run folder: its best epoch
        if not (folder / SETTINGS_FILE).exists():
            raise UserError(f"{folder} is not a trained task2 captioner (no {SETTINGS_FILE}); "
                            "pass a run folder written by task2/train.py.")
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text())
            projector = Projector(**settings["projector"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{folder / SETTINGS_FILE} is damaged ({type(e).__name__}: {e}).") from None
        llm, _ = get_llm(llm_name or settings["llm"], token, settings.get("llm_dtype", "float32"))
        try:
            llm = PeftModel.from_pretrained(llm, folder / "adapter")
            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
            projector.load_state_dict(load_file(folder / "projector.safetensors"))
        except (*_load_errors(), RuntimeError) as e:  # RuntimeError: tensors of the wrong shape
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"the trained captioner in {folder} is incomplete or damaged "
                            f"({first[:160]}).") from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(llm, tokenizer, projector, settings).eval()


def anymodal_recipe(model: AnyModalCaptioner, cfg, token: str | None = None) -> Recipe:
    """The engine Recipe: loss on batch["features"] + captions, batched captioning, save/load."""

    def loss(model, batch, state=None):
        return model(batch["features"], batch["caption"])

    def caption(model, batch, preset):
        return model.caption(batch["features"], preset, cfg.max_new_tokens)

    return Recipe(model=model, loss=loss, caption=caption, save=lambda m, folder: m.save(folder),
                  load=lambda folder: AnyModalCaptioner.load(folder, token))
