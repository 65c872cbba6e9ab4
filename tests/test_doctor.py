"""python -m captioning.doctor: one line per check, a fix under each that is not OK, exit 0 when the
essentials are OK; offline it says "not cached, offline" without touching the network."""
import os
import shutil
import socket

import pytest

from captioning import doctor
from conftest import run_cli

SECRET = "hf_SECRETdoctor0123456789"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and our cache folder in tmp; offline; a token in the environment."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("FOODCAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return tmp_path / "hub"


def cache_model(hub, repo: str, files: dict) -> None:
    """Lay out `repo` in a hub cache the way huggingface_hub does (refs/main -> snapshots/<rev>/)."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snap = folder / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for name, raw in files.items():
        (snap / name).write_bytes(raw)


def lines_of(out: str) -> dict:
    """check name -> (status, detail, fix)."""
    found, last = {}, None
    for line in out.splitlines():
        if line.startswith(("OK ", "WARN", "FAIL")):
            status, rest = line.split(None, 1)
            name, detail = rest.split(": ", 1)
            found[name] = last = [status, detail, ""]
        elif line.strip().startswith("fix: ") and last:
            last[2] = line.strip()[5:]
    return found


def no_network(*args, **kwargs):
    raise AssertionError("the doctor went to the network")


def test_offline_lists_every_recipe_model_without_the_network(hub, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    weights = {"config.json": b"{}", "model.safetensors": b"x" * 1000}
    cache_model(hub, "nlpconnect/vit-gpt2-image-captioning", weights)
    cache_model(hub, "google/vit-base-patch16-224-in21k", {"config.json": b"{}"})
    code = doctor.main(["--hf-token", SECRET])
    out = capsys.readouterr().out
    assert code == 0
    checks = lines_of(out)
    assert checks["model nlpconnect/vit-gpt2-image-captioning"][:2] == [
        "OK", "cached, 0.0 GB of weights; used by the task1 recipes"]
    assert checks["model google/vit-base-patch16-224-in21k"][0] == "WARN"
    assert "config cached but no weights" in checks["model google/vit-base-patch16-224-in21k"][1]
    for repo in ("meta-llama/Llama-3.2-1B", "deepseek-community/deepseek-vl-7b-chat"):
        status, detail, fix = checks[f"model {repo}"]
        assert status == "WARN" and detail.startswith("not cached, offline") and f"hf download {repo}" in fix
    for name in ("python", "packages", "torch", "CUDA", "java", "tesseract", "cache folder", "hub cache",
                 "Hugging Face token"):
        assert name in checks, name
    assert all(fix for status, _, fix in checks.values() if status != "OK")  # a fix under every non-OK line
    assert checks["Hugging Face token"][:2] == ["OK", "set (not shown)"] and SECRET not in out
    assert out.strip().endswith("warning(s).") and "essentials OK" in out


def test_online_asks_the_hub_once_per_model_and_names_what_is_wrong(hub, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN")
    asked = []

    def metadata(url, token=None, timeout=None, **kw):
        asked.append((url, timeout))
        if "Llama" in url:
            err = GatedRepoError.__new__(GatedRepoError)
            Exception.__init__(err, "gated")
            raise err
        if "deepseek" in url:
            raise ConnectionError("no route to host")
        return object()

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    assert doctor.main([]) == 0
    checks = lines_of(capsys.readouterr().out)
    assert len(asked) == 4 and all(t <= 10 for _, t in asked)
    llama = checks["model meta-llama/Llama-3.2-1B"]
    assert llama[0] == "WARN" and "gated" in llama[1] and "licence" in llama[2]
    assert "hub unreachable (ConnectionError)" in checks["model deepseek-community/deepseek-vl-7b-chat"][1]
    assert checks["model nlpconnect/vit-gpt2-image-captioning"][:2] == [
        "OK", "not cached, reachable: downloaded on first use; used by the task1 recipes"]
    assert checks["Hugging Face token"][0] == "WARN" and "HF_TOKEN" in checks["Hugging Face token"][2]


@pytest.mark.parametrize("broken,name,words", [
    ("java", "java", "default-jre-headless"),
    ("disk", "cache folder", "--cache-dir"),
    ("access", "cache folder", "--cache-dir"),
    ("torch", "package torch", "requirements.txt"),
])
def test_a_missing_essential_fails_with_its_fix(broken, name, words, hub, monkeypatch, capsys):
    import importlib.util

    real_which, real_usage, real_spec = shutil.which, shutil.disk_usage, importlib.util.find_spec
    if broken == "java":
        monkeypatch.setattr(shutil, "which", lambda exe: None if exe == "java" else real_which(exe))
    elif broken == "disk":
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=2**29))
    elif broken == "access":
        monkeypatch.setattr(os, "access", lambda p, mode: False)
    else:
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda m, *a: None if m == "torch" else real_spec(m, *a))
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    status, _, fix = lines_of(out)[name]
    assert status == "FAIL" and words in fix and "essential check(s) failed" in out


def test_missing_tesseract_is_a_warning_only(hub, monkeypatch, capsys):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda exe: None if exe == "tesseract" else real_which(exe))
    assert doctor.main([]) == 0
    status, _, fix = lines_of(capsys.readouterr().out)["tesseract"]
    assert status == "WARN" and "--no-ocr" in fix


def test_recipe_models_are_the_scripts_defaults():
    from test_reliability import entry

    defaults = set()
    for script in ("task1/task1_1.py", "task1/vit_gpt2_finetuned.py", "task2/train.py", "task2/deepseek.py"):
        cfg = entry(script).__globals__["Config"]()
        defaults |= {cfg.model, getattr(cfg, "vision_model", cfg.model)}
    assert defaults == set(doctor.RECIPE_MODELS)


def test_command_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_TOKEN": SECRET, "HF_HUB_CACHE": str(tmp_path / "hub")}
    p = run_cli("-m", "captioning.doctor", "--model", tmp_path, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "essentials OK" in p.stdout and f"model {tmp_path}: local folder without config.json" in p.stdout
    assert "not cached, offline" in p.stdout and "Traceback" not in p.stderr
    assert SECRET not in p.stdout + p.stderr
