"""Check this machine before a long run: the tools, disk space and hub models the recipes need.

    python -m captioning.doctor [--cache-dir DIR] [--model HUB_ID ...] [--hf-token TOKEN]

One line per check, OK, WARN (a recipe, a cleaning step or the GPU will be missing) or FAIL
(nothing will run), and under anything not OK the one-line fix. The exit code is 0 when no
essential check fails (Python, the packages, torch, Java for the metrics, a writable cache folder
with room), 1 otherwise. Hub models (the defaults of the recipes, plus any --model) are looked up
in the local Hugging Face cache; only when HF_HUB_OFFLINE is unset is the hub asked, once per model
with a 5 s timeout, whether it could be downloaded. Nothing is downloaded or written, and the
token is never printed.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import hf_token, run_main

# The hub models the recipes start from by default (tests/test_doctor.py checks them against each Config).
RECIPE_MODELS = {
    "nlpconnect/vit-gpt2-image-captioning": "the task1 recipes",
    "google/vit-base-patch16-224-in21k": "task2/train.py, --vision-model",
    "meta-llama/Llama-3.2-1B": "task2/train.py, gated",
    "deepseek-community/deepseek-vl-7b-chat": "task2/deepseek.py",
}
# (import name, distribution, what needs it; None = every script)
PACKAGES = [("torch", "torch", None), ("transformers", "transformers", None),
            ("accelerate", "accelerate", None), ("safetensors", "safetensors", None),
            ("pycocoevalcap", "pycocoevalcap", None), ("PIL", "Pillow", None), ("pandas", "pandas", None),
            ("peft", "peft", "task2 (LoRA)"), ("imagehash", "ImageHash", "imageCleaning (duplicates)"),
            ("matplotlib", "matplotlib", "the report's curves")]
MIN_FREE_GB = 2  # less than this: not even the pixel cache of the Kaggle images fits
WANT_CACHE_GB = 10  # pixel + feature caches of the ~13,500 Kaggle images
WANT_HUB_GB = 30  # DeepSeek-VL 7B alone takes ~15 GB
INSTALL = "pip install -r requirements.txt (or: make setup)"


@dataclass
class Check:
    status: str  # "OK", "WARN" or "FAIL"
    name: str
    detail: str
    fix: str = ""


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 10)
    return Check("OK" if ok else "FAIL", "python", f"{v.major}.{v.minor}.{v.micro}",
                 "" if ok else "use Python 3.10 or newer (make setup PYTHON=python3.11)")


def check_packages() -> list[Check]:
    found, out = [], []
    for module, dist, needed_by in PACKAGES:
        if importlib.util.find_spec(module) is None:
            status = "FAIL" if needed_by is None else "WARN"
            what = f"not installed (needed by {needed_by or 'every script'})"
            out.append(Check(status, f"package {dist}", what, INSTALL))
            continue
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(dist)
    return [Check("OK", "packages", ", ".join(found))] + out


def check_torch() -> list[Check]:
    import torch

    cpu_fix = ("on a GPU machine install the torch build for its CUDA "
               "(https://pytorch.org/get-started/locally/); the CPU is fine for demo.py only")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        return [Check("OK", "torch", torch.__version__),
                Check("WARN", "CUDA", f"no GPU visible (torch is {build}): scripts run on the CPU", cpu_fix)]
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(f"{p.name} ({p.total_memory / 2**30:.0f} GiB)")
    bf16 = "bf16 yes" if torch.cuda.is_bf16_supported() else "no bf16 (runs in fp32)"
    return [Check("OK", "torch", torch.__version__),
            Check("OK", "CUDA", f"{torch.version.cuda}: {', '.join(gpus)}; {bf16}")]


def _tool_version(exe: str, args: list[str]) -> str | None:
    try:
        p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (p.stdout + "\n" + p.stderr).strip()
    return text.splitlines()[0].strip() if p.returncode == 0 and text else None


def _check_tool(name: str, flag: str, used_for: str, level: str, without: str, fix: str) -> Check:
    """OK with the version an external program prints, else `level` saying what is lost without it."""
    exe = shutil.which(name)
    version = exe and _tool_version(exe, [flag])
    if version:
        return Check("OK", name, f"{version} ({used_for})")
    what = "not found on PATH" if not exe else f"{exe} does not run"
    return Check(level, name, f"{what}: {without}", fix)


def check_java() -> Check:
    return _check_tool("java", "-version", "METEOR and the PTB tokenizer of the metrics", "FAIL",
                       "no metrics can be computed", "sudo apt-get install default-jre-headless (any Java 8+)")


def check_tesseract() -> Check:
    return _check_tool("tesseract", "--version", "OCR text filter of imageCleaning/preprocess.py", "WARN",
                       "preprocess.py cannot find images with printed text",
                       "sudo apt-get install tesseract-ocr, or run preprocess.py with --no-ocr")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_space(name: str, folder: Path, want_gb: float, essential: bool, fix_folder: str) -> Check:
    base = _existing(folder)
    if not os.access(base, os.W_OK | os.X_OK):
        return Check("FAIL" if essential else "WARN", name, f"{folder} is not writable", fix_folder)
    free = shutil.disk_usage(base).free / 2**30
    detail = f"{folder}: {free:.0f} GB free"
    if free < MIN_FREE_GB:
        return Check("FAIL" if essential else "WARN", name, detail + f" (under {MIN_FREE_GB} GB)",
                     f"free some space or {fix_folder}")
    if free < want_gb:
        return Check("WARN", name, f"{detail} (a full run wants ~{want_gb} GB)",
                     f"free some space or {fix_folder}")
    return Check("OK", name, detail)


def hub_cache() -> Path:
    from huggingface_hub import constants

    home = os.environ.get("HF_HOME")
    env = os.environ.get("HF_HUB_CACHE") or (home and os.path.join(home, "hub"))
    return Path(env or constants.HF_HUB_CACHE).expanduser()


def offline() -> bool:
    flags = [os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]
    if any(f is not None for f in flags):
        return any(str(f).strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags)
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_model(repo: str, used_by: str, token: str | None, cache: Path) -> Check:
    from huggingface_hub import try_to_load_from_cache

    name = f"model {repo}"
    if Path(repo).expanduser().exists():
        ok = (Path(repo).expanduser() / "config.json").is_file()
        return Check("OK" if ok else "WARN", name, "local folder" + ("" if ok else " without config.json"),
                     "" if ok else "pass a folder written by save_pretrained")
    download = f"with internet: hf download {repo} (or copy {cache} from such a machine)"
    try:
        config = try_to_load_from_cache(repo, "config.json", cache_dir=str(cache))
    except ValueError:  # not a valid repo id
        return Check("WARN", name, "neither a local folder nor a valid hub id", "check the spelling")
    if isinstance(config, str):
        snapshot = Path(config).parent
        files = [p for p in snapshot.iterdir() if p.suffix in (".safetensors", ".bin")]
        if not files:
            return Check("WARN", name, f"config cached but no weights; used by {used_by}", download)
        size = sum(p.resolve().stat().st_size for p in files if p.resolve().exists()) / 1e9
        return Check("OK", name, f"cached, {size:.1f} GB of weights; used by {used_by}")
    if offline():
        return Check("WARN", name, f"not cached, offline (HF_HUB_OFFLINE); used by {used_by}", download)
    return _ask_hub(name, repo, used_by, token)


def _ask_hub(name: str, repo: str, used_by: str, token: str | None) -> Check:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        get_hf_file_metadata(hf_hub_url(repo, "config.json"), token=token, timeout=5)
    except GatedRepoError:
        return Check("WARN", name, f"not cached; gated and this token has no access; used by {used_by}",
                     f"accept the licence at https://huggingface.co/{repo}, then export HF_TOKEN=hf_...")
    except RepositoryNotFoundError:
        return Check("WARN", name, f"not cached and not on the hub; used by {used_by}", "check the model id")
    except Exception as e:  # connection refused, DNS, proxy, timeout: the hub cannot be reached
        return Check("WARN", name, f"not cached, hub unreachable ({type(e).__name__}); used by {used_by}",
                     "check the network or proxy (HTTPS_PROXY), or download it on another machine")
    return Check("OK", name, f"not cached, reachable: downloaded on first use; used by {used_by}")


def check_token(token: str | None) -> Check:
    if token:
        return Check("OK", "Hugging Face token", "set (not shown)")
    return Check("WARN", "Hugging Face token", "not set: gated models (meta-llama/*) cannot be downloaded",
                 "accept the model's licence on its hub page, then export HF_TOKEN=hf_...")


def run_checks(cache_dir: str = "", models=(), token: str | None = None) -> list[Check]:
    ours = Path(cache_dir or os.environ.get("FOODCAP_CACHE") or Path.home() / ".cache" / "foodcap")
    ours = ours.expanduser()
    hub = hub_cache()
    checks = [check_python(), *check_packages()]
    if importlib.util.find_spec("torch") is not None:
        checks += check_torch()
    checks += [check_java(), check_tesseract(),
               check_space("cache folder", ours, WANT_CACHE_GB, True,
                           "pass --cache-dir (or set FOODCAP_CACHE) to a bigger, writable disk"),
               check_space("hub cache", hub, WANT_HUB_GB, False, "set HF_HOME to a bigger, writable disk"),
               check_token(token)]
    wanted = {**RECIPE_MODELS, **{m: "--model" for m in models if m not in RECIPE_MODELS}}
    checks += [check_model(repo, used_by, token, hub) for repo, used_by in wanted.items()]
    return checks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m captioning.doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default="", help="the cache folder the scripts will use (default: "
                   "$FOODCAP_CACHE or ~/.cache/foodcap)")
    p.add_argument("--model", action="append", default=[], metavar="HUB_ID",
                   help="also check this hub model or folder (repeatable)")
    p.add_argument("--hf-token", default="", help="Hugging Face token (default: $HF_TOKEN); never printed")
    a = p.parse_args(argv)
    token = hf_token(a.hf_token)
    checks = run_checks(a.cache_dir, a.model, token)
    for c in checks:
        line = f"{c.status:<4}  {c.name}: {c.detail}"
        if c.status != "OK" and c.fix:
            line += f"\n      fix: {c.fix}"
        print(line.replace(token, "<token>") if token else line)
    failed = [c.name for c in checks if c.status == "FAIL"]
    warned = sum(c.status == "WARN" for c in checks)
    if failed:
        print(f"{len(failed)} essential check(s) failed: {', '.join(failed)}; {warned} warning(s).")
        return 1
    print(f"essentials OK; {warned} warning(s).")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
