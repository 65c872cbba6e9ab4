"""Shared fixtures: one small synthetic dataset with every tiny model, built once per session."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Pixel/feature caches of the whole session live in a temp folder, never in ~/.cache."""
    os.environ["FOODCAP_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny-model ops gain nothing from two threads; on a busy CPU two spinning threads run ~10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    """A 160-image synthetic dataset (+ its dirty entries) with DIR/models/<every tiny model>."""
    from captioning import synthetic

    d = tmp_path_factory.mktemp("synth")
    synthetic.make_dataset(d, n=160, seed=3)
    synthetic.build_models(d)
    return d


def run_cli(*args, timeout=300, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    """Run `python ARGS...` (a script path or -m module) the way a user would; capture output."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=timeout)


def assert_clean_failure(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 2, one 'error:' sentence, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error:" in proc.stderr
    for w in words:
        assert w.lower() in proc.stderr.lower(), (w, proc.stderr[-2000:])
