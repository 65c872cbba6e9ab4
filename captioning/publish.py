"""Share a trained run's model on the Hugging Face Hub: its best/ folder, model card included.

    HF_TOKEN=hf_... python -m captioning.publish runs/vit_gpt2_finetuned your-name/food-titles
    python -m captioning.publish runs/llama_lora your-name/food-titles-llama --private

Uploads RUN/best (weights as safetensors, tokenizer, processor, captioner.json and the README.md
model card, rewritten so its examples name REPO_ID) with huggingface_hub, creating the repository
if needed. The token comes from --token or $HF_TOKEN (or `huggingface-cli login`) and is never
printed. Offline (HF_HUB_OFFLINE=1, or no network) it says so in one sentence and exits 2.
A task2 run's adapter is shared, not its base LLM and image encoder: the card says which ones it needs.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .config import UserError, hf_token, run_main

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _sentence(e: Exception, token: str | None) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return text.replace(token, "<token>") if token else text


def publish(run, repo_id: str, token: str | None = None, private: bool = False, api=None) -> str:
    """Upload RUN's best/ to repo_id; returns the repository's URL. `api` (an HfApi) is for tests."""
    from .captioner import model_folder, read_manifest
    from .card import write_card

    if not REPO_ID.match(repo_id):
        raise UserError(f"{repo_id!r} is not a Hub repository id; use OWNER/NAME, e.g. your-name/food-titles.")
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist.")
    best = model_folder(run)
    if best == run or read_manifest(best) is None:
        raise UserError(f"{run} holds no trained model to publish (no best/ folder with captioner.json).")
    if _offline():
        raise UserError("cannot publish while HF_HUB_OFFLINE is set: the Hub cannot be reached offline; "
                        "unset it (and TRANSFORMERS_OFFLINE) on a machine with network access.")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    write_card(run, repo=repo_id)  # the card's examples name the repository
    try:
        url = api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(best), repo_id=repo_id, token=token, repo_type="model",
                          commit_message=f"Upload {run.resolve().name} (food-captioning toolkit)",
                          ignore_patterns=[".*"])
    except Exception as e:  # network, authentication, permission: one sentence, the token never shown
        name = type(e).__name__
        if any(w in name for w in ("Connection", "Timeout", "Offline")) or "resolve" in str(e).lower():
            raise UserError(f"cannot reach the Hugging Face Hub ({_sentence(e, token)}).") from None
        raise UserError(f"the Hub refused the upload to {repo_id} ({name}: {_sentence(e, token)}); check "
                        "that the token can write there (HF_TOKEN or --token).") from None
    finally:
        write_card(run)  # the local card names the local folder again
    return str(getattr(url, "url", url) or f"https://huggingface.co/{repo_id}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m captioning.publish", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="a run folder (its best/ model is uploaded)")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub repository, OWNER/NAME")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token", default="", help="Hub token with write access (default: $HF_TOKEN); never printed")
    a = p.parse_args(argv)
    url = publish(a.run, a.repo_id, hf_token(a.token), a.private)
    print(f"published {a.run} to {url}", file=sys.stderr)
    return url


if __name__ == "__main__":
    run_main(main)
