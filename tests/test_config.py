"""captioning.config: dataclass -> CLI, JSON config files, help text, redaction."""
import json
from dataclasses import dataclass

import pytest

from captioning.config import TrainConfig, UserError, choice, parse_config, to_dict


@dataclass
class Demo(TrainConfig):
    # What to train (pick one):
    #   "none" everything
    #   "vit"  freeze the encoder
    freeze: str = choice("none", "vit")
    # Weight of the thing
    alpha: float = 0.25  # inline note


def test_flags_types_and_defaults():
    cfg = parse_config(Demo, ["--epochs", "3", "--lr", "1e-3", "--freeze", "vit", "--no-overwrite", "--resume"])
    assert (cfg.epochs, cfg.lr, cfg.freeze, cfg.resume, cfg.alpha) == (3, 1e-3, "vit", True, 0.25)
    assert cfg.model == "nlpconnect/vit-gpt2-image-captioning"


def test_json_file_and_cli_precedence(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"epochs": 7, "freeze": "vit", "alpha": 0.5}))
    cfg = parse_config(Demo, ["--config", str(p), "--alpha", "0.9"])
    assert (cfg.epochs, cfg.freeze, cfg.alpha) == (7, "vit", 0.9)


@pytest.mark.parametrize("content,words", [('{"nope": 1}', "unknown field"), ("[1]", "JSON object"),
                                           ("{bad", "not valid JSON"), ('{"freeze": "all"}', "must be one of")])
def test_bad_json(tmp_path, content, words):
    p = tmp_path / "c.json"
    p.write_text(content)
    with pytest.raises(UserError, match=words):
        parse_config(Demo, ["--config", str(p)])


def test_bad_choice_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Demo, ["--freeze", "everything"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_shows_comments(capsys):
    with pytest.raises(SystemExit):
        parse_config(Demo, ["--help"])
    out = capsys.readouterr().out
    assert "freeze the encoder" in out and "inline note" in out and "Weight of the thing" in out
    assert "Peak learning rate" in out  # inherited field comments too


def test_token_is_redacted():
    cfg = parse_config(Demo, ["--hf-token", "hf_secret123"])
    assert cfg.hf_token == "hf_secret123"
    assert "hf_secret123" not in json.dumps(to_dict(cfg))
    assert to_dict(cfg)["max_new_tokens"] == cfg.max_new_tokens  # a count of tokens is no secret


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--lr", "-1"), ("--limit", "-3"), ("--epochs", "-1")])
def test_out_of_range_values(flag, value):
    with pytest.raises(UserError, match="must be at least"):
        parse_config(Demo, [flag, value])
