"""The captioner interface (issue 12): one registry of families, one load_captioner, no import circle."""
import ast
import json
from pathlib import Path

import pytest

from captioning import captioner as C
from captioning.config import UserError
from conftest import ROOT


# ------------------------------------------------------------------------------ package structure
def package_imports() -> dict:
    """module -> the package modules it imports (anywhere in the file, function-level included, except in
    `main`: a module's command line may use what is built on top of it, the library code may not)."""
    graph = {}
    for f in (ROOT / "captioning").glob("*.py"):
        found = set()
        tree = ast.parse(f.read_text())
        entry = {id(n) for fn in tree.body if isinstance(fn, ast.FunctionDef) and fn.name == "main"
                 for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if id(node) in entry:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level == 1:
                    found.add(node.module.split(".")[0])
                elif node.module.startswith("captioning."):
                    found.add(node.module.split(".")[1])
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if getattr(node, "module", None) else [])
                assert getattr(node, "level", 0) or not any(
                    n.split(".")[0] in ("task1", "task2", "llm", "vision", "anymodal") for n in names if n
                ), f"{f.name} imports a recipe module"
        graph[f.stem] = found
    return graph


def test_the_package_has_no_import_circle_and_the_interface_is_a_leaf():
    graph = package_imports()
    assert graph["captioner"] <= {"config", "loading"}, graph["captioner"]
    assert graph["loading"] <= {"config", "doctor"} and not graph["imaging"] and not graph["tokens"]

    def visit(node, path):
        for nxt in graph.get(node, ()):
            assert nxt not in path, f"import circle: {' -> '.join(path[path.index(nxt):] + [nxt])}"
            visit(nxt, path + [nxt])

    for module in graph:
        visit(module, [module])


def test_every_registered_family_imports_and_implements_the_interface():
    for name in C.FAMILIES:
        cls = C.family_class(name)
        assert issubclass(cls, C.Captioner) and cls.family == name
        for method in ("load", "caption", "describe"):
            assert getattr(cls, method) is not getattr(C.Captioner, method) or method == "describe", (name, method)


# ------------------------------------------------------------------------- which family a folder is
def folder(tmp_path, name, files: dict) -> Path:
    d = tmp_path / name
    d.mkdir(parents=True)
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text if isinstance(text, str) else json.dumps(text))
    return d


def test_resolve_by_manifest_marker_and_model_type(tmp_path):
    ved = folder(tmp_path, "ved", {"config.json": {"model_type": "vision-encoder-decoder"}})
    assert C.resolve(str(ved))[:2] == ("vision-encoder-decoder", str(ved))
    vlm = folder(tmp_path, "vlm", {"config.json": {"model_type": "deepseek_vl_hybrid"}})
    assert C.resolve(str(vlm))[0] == "chat-vlm"
    old_task2 = folder(tmp_path, "task2/best", {"anymodal.json": {}})  # written before manifests existed
    run = old_task2.parent
    (run / "metrics.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({"method": "llama_lora"}))  # a run's config, not a model's
    assert C.resolve(str(run)) == ("prefix-llm", str(old_task2), {})
    # the manifest wins over what the folder looks like, and carries the settings
    C.write_manifest(ved, "chat-vlm", question="What dish?", preset="greedy")
    assert C.resolve(str(ved)) == ("chat-vlm", str(ved), {"question": "What dish?", "preset": "greedy"})


@pytest.mark.parametrize("case, words", [
    ("file", ["is a file"]), ("missing", ["does not exist"]), ("empty", ["holds no captioner"]),
    ("unknown model type", ["'bert'", "no captioner family"]), ("run without best", ["without a best/"]),
    ("newer format", ["newer version"]), ("unknown family", ["unknown captioner family", "prefix-llm"]),
    ("damaged manifest", ["damaged"]), ("damaged config", ["damaged"]),
    ("uncached hub id", ["someone/not-cached-model", "hf download"]),
])
def test_what_is_not_a_captioner_gets_one_sentence(case, words, tmp_path):
    make = {
        "file": lambda: folder(tmp_path, "f", {"x.txt": "hi"}) / "x.txt",
        "missing": lambda: tmp_path / "nope",
        "empty": lambda: folder(tmp_path, "e", {}),
        "unknown model type": lambda: folder(tmp_path, "b", {"config.json": {"model_type": "bert"}}),
        "run without best": lambda: folder(tmp_path, "r", {"metrics.json": {}, "log.jsonl": ""}),
        "newer format": lambda: folder(tmp_path, "n", {C.MANIFEST: {"family": "prefix-llm", "format": 99}}),
        "unknown family": lambda: folder(tmp_path, "u", {C.MANIFEST: {"family": "telepathy", "format": 1}}),
        "damaged manifest": lambda: folder(tmp_path, "d", {C.MANIFEST: "{not json"}),
        "damaged config": lambda: folder(tmp_path, "c", {"config.json": "[1, 2"}),
        "uncached hub id": lambda: "someone/not-cached-model",  # the suite runs offline
    }
    with pytest.raises(UserError) as e:
        C.load_captioner(str(make[case]()))
    assert all(w.lower() in str(e.value).lower() for w in words), str(e.value)


class Echo(C.Captioner):
    """A family defined outside the package: registering it is all it takes."""

    family = "echo"

    @classmethod
    def load(cls, source, token=None, device=None, settings=None):
        return cls(source, settings)

    def caption(self, images, preset=None, top_k=0, max_new_tokens=None):
        preset, _ = self._decoding(preset, max_new_tokens)
        return [C.Caption(f"{preset} {im.size[0]}x{im.size[1]}") for im in images]


def test_a_new_family_is_one_registration(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setitem(C.FAMILIES, "echo", C.Family("echo", f"{__name__}:Echo", markers=("echo.txt",)))
    run = tmp_path / "my_run"
    folder(tmp_path, "my_run/best", {"echo.txt": ""})
    (run / "log.jsonl").write_text("")
    cap = C.load_captioner(str(run))
    assert isinstance(cap, Echo) and cap.name == "my_run" and cap.describe()["family"] == "echo"
    assert [c.title for c in cap.caption([Image.new("RGB", (3, 2))])] == ["beam 3x2"]
    C.write_manifest(run / "best", "echo", preset="greedy")
    assert C.load_captioner(str(run / "best")).caption([Image.new("RGB", (1, 1))])[0].title == "greedy 1x1"
