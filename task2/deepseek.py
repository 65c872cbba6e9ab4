"""Task 2: zero-shot dish titles from DeepSeek-VL, or from any chat vision-language model of transformers.

Each image goes to the chat model as one user turn "image + question"; the answer is cleaned into a
title (quotes, "Title:" labels, markdown and trailing sentences removed) and scored like every other
run. The model class comes from the checkpoint's config: DeepSeek-VL 7B chat is the hybrid
(SigLIP + SAM) model, the 1.3B is not; Llama 3.2 Vision and the other image-text-to-text models
take the same path. Nothing is trained.

    python task2/deepseek.py --data-dir data --output-dir runs/deepseek
    python task2/deepseek.py --data-dir data --prompt few-shot --batch-size 16
    python task2/deepseek.py --data-dir data --prompt retrieved --shots 8   # titles of the 8 most similar photos
    python task2/deepseek.py --data-dir data --adapter runs/vlm_lora        # a LoRA adapter of task2/vlm_lora.py
    HF_TOKEN=... python task2/deepseek.py --data-dir data --model meta-llama/Llama-3.2-11B-Vision-Instruct
    python task2/deepseek.py --data-dir data --backend deepseek_vl   # DeepSeek's original package
    accelerate launch task2/deepseek.py ...     # several GPUs: a model copy on each, a share of the batches each
"""
import json
import random
from dataclasses import dataclass
from pathlib import Path

from captioning import distributed
from captioning.config import RunConfig, UserError, choice, hf_token, parse_config, run_main
from captioning.data import split_records
from captioning.engine import Run, atomic_write_text, evaluate_splits, print_metrics
from captioning.generation import generation_kwargs
from captioning.vlm import (chat_answers, clean_title, deepseek_vl_answers, deepseek_vl_classes,
                            image_datasets, load_chat_vlm, load_deepseek_vl_package)
from captioning.vlm_lora import load_adapter

NATIVE = "deepseek-community/deepseek-vl-7b-chat"  # transformers' own port of the weights
ORIGINAL = "deepseek-ai/deepseek-vl-7b-chat"  # the weights the deepseek_vl package reads
PROMPTS = {
    "original": "Put a short title to the dish in this image",
    "title": "What is the title of the recipe for the dish in this image? Answer with the title only, "
             "at most ten words, no explanation.",
    "few-shot": "Here are titles of recipes from the same cookbook:\n{examples}\nWrite the title of the "
                "recipe for the dish in this image, in the same style. Answer with the title only.",
    "retrieved": "Here are titles of recipes whose photos look like this one:\n{examples}\nWrite the title of "
                 "the recipe for the dish in this image, in the same style. Answer with the title only.",
}


@dataclass
class Config(RunConfig):
    # A DeepSeek-VL checkpoint or any image-text-to-text chat model of transformers, for example
    #   "deepseek-community/deepseek-vl-7b-chat"    hybrid SigLIP + SAM encoders (the course's model)
    #   "deepseek-community/deepseek-vl-1.3b-chat"  SigLIP only: smaller and faster
    #   "meta-llama/Llama-3.2-11B-Vision-Instruct"  gated: accept the licence, then set HF_TOKEN
    model: str = NATIVE
    output_dir: str = "runs/deepseek"
    # What to ask (pick one):
    #   "original"  "Put a short title to the dish in this image" (the course's prompt)
    #   "title"     asks for the recipe title only, at most ten words, no explanation
    #   "few-shot"  first shows SHOTS titles drawn (seeded) from the training split, then asks for one
    #   "retrieved" first shows the titles of the SHOTS training photos most similar to this one (cosine of
    #               RETRIEVAL_ENCODER's features), then asks for one
    prompt: str = choice("original", "title", "few-shot", "retrieved")
    # Your own question instead of PROMPT (empty: use PROMPT)
    question: str = ""
    # Example titles the few-shot and retrieved prompts show
    shots: int = 8
    # The frozen image encoder that finds similar training photos for --prompt retrieved
    retrieval_encoder: str = "google/vit-base-patch16-224-in21k"
    # A LoRA adapter trained by task2/vlm_lora.py (its run folder or best/): its base model, question and
    # adapter are used (--model and --prompt are then ignored; --question still wins)
    adapter: str = ""
    # "transformers": the native classes; "deepseek_vl": DeepSeek's original package, installed with
    # pip install git+https://github.com/deepseek-ai/DeepSeek-VL.git (reads deepseek-ai/deepseek-vl-7b-chat)
    backend: str = choice("transformers", "deepseek_vl")
    # Decoding: "greedy" (one beam, the zero-shot default), "beam" (4 beams) or "nucleus" sampling
    preset: str = choice("greedy", "beam", "nucleus")
    # Longest answer, in tokens (a title is short; the cleaner cuts what follows it)
    max_new_tokens: int = 24
    # Images per generate call (left-padded batch); lower it if the GPU runs out of memory
    batch_size: int = 8
    # Weights' precision: "auto" = bfloat16 on a GPU that supports it, else float32
    dtype: str = choice("auto", "bfloat16", "float16", "float32")
    # Run Python code shipped with the checkpoint (only for a model you trust; not needed for the above)
    trust_remote_code: bool = False


def question(cfg) -> str:
    """The question of this run; the few-shot one lists example titles from the training split."""
    if cfg.question:
        return cfg.question
    if cfg.prompt != "few-shot":
        return PROMPTS[cfg.prompt]
    records, _ = split_records(cfg, "train", check_images=False)
    titles = sorted({r.title for r in records})
    examples = random.Random(cfg.seed).sample(titles, min(cfg.shots, len(titles)))
    return PROMPTS["few-shot"].format(examples="\n".join(f"- {t}" for t in examples))


def retrieved_questions(cfg, datasets) -> dict:
    """Image name -> the retrieved prompt listing the titles of its `shots` nearest training photos (the
    photo itself never among them; validation and test titles never read)."""

    from captioning.cache import encoder_fingerprint, feature_datasets
    from captioning.prefix_llm import load_vision
    from captioning.retrieval import embed, neighbours

    encoder, processor = load_vision(cfg.retrieval_encoder, hf_token(cfg.hf_token))
    # the feature cache runs the encoder on this process's device, once per machine
    feats = feature_datasets(cfg, processor, encoder, ("train", "valid", "test"), encoder_key=encoder_fingerprint(encoder))
    train = feats["train"]
    bank, names = embed(train.arrays), [r.image_name for r in train.records]
    out = {}
    for split in ("valid", "test"):
        queries = [r.image_name for r in feats[split].records]
        for name, row in zip(queries, neighbours(embed(feats[split].arrays), bank, cfg.shots, queries, names)):
            examples = "\n".join(f"- {train.records[int(i)].title}" for i in row)
            out[name] = PROMPTS["retrieved"].format(examples=examples)
    return out


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    if min(cfg.batch_size, cfg.max_new_tokens, cfg.shots) < 1:
        raise UserError("--batch-size, --max-new-tokens and --shots must be at least 1.")
    original = cfg.backend == "deepseek_vl"
    if original:
        deepseek_vl_classes()  # stops here, with how to install it, when the package is missing
        cfg.model = ORIGINAL if cfg.model == NATIVE else cfg.model
    if original and (cfg.prompt == "retrieved" or cfg.adapter):
        raise UserError("--prompt retrieved and --adapter need --backend transformers.")
    what = f"LoRA adapter {Path(cfg.adapter).name}" if cfg.adapter else ("own question" if cfg.question else cfg.prompt)
    processes = distributed.state(cfg)
    run = Run(cfg, f"{'vlm_lora' if cfg.adapter else 'zero-shot'} {Path(cfg.model).name} ({what})",
              is_main=processes.is_main_process)
    datasets = image_datasets(cfg, ("valid", "test"))
    per_image = retrieved_questions(cfg, datasets) if cfg.prompt == "retrieved" and not cfg.question else {}
    ask = question(cfg) if not per_image else PROMPTS["retrieved"]
    if original:
        model, processor = load_deepseek_vl_package(cfg.model, hf_token(cfg.hf_token), cfg.dtype)
        answer = deepseek_vl_answers
    elif cfg.adapter:
        model, processor, saved = load_adapter(cfg.adapter, hf_token(cfg.hf_token), cfg.dtype)
        ask, cfg.model, answer = cfg.question or saved["question"], saved["base"], chat_answers
    else:
        model, processor = load_chat_vlm(cfg.model, hf_token(cfg.hf_token), cfg.dtype, cfg.trust_remote_code)
        answer = chat_answers
    if processes.is_main_process:
        print(f"{cfg.model}: {type(model).__name__}, {model.dtype}, asking: {ask!r}")
    raw = {}  # image name -> raw answer, of the images this process captioned

    def caption(model, batch, preset):
        kwargs = generation_kwargs(preset, cfg.max_new_tokens)
        questions = [per_image[n] for n in batch["image_name"]] if per_image else ask
        answers = answer(model, processor, batch["image"], questions, **kwargs)
        raw.update(zip(batch["image_name"], answers))
        return [clean_title(a) for a in answers]

    metrics = evaluate_splits(run, cfg, caption, model, datasets, model.device,
                              info={"model": cfg.model, "model_class": type(model).__name__, "question": ask,
                                    "processes": processes.num_processes})
    raw = {k: v for part in distributed.gather([raw]) for k, v in part.items()}
    if processes.is_main_process:
        names = [(s, r.image_name) for s in ("valid", "test") for r in datasets[s].records]
        atomic_write_text(run.dir / "answers.jsonl", "".join(  # the raw answers, to check the cleaner
            json.dumps({"split": s, "Image_Name": n, "answer": raw[n], "title": clean_title(raw[n])}) + "\n"
            for s, n in names))
        print_metrics(run.method, metrics)
    return metrics


if __name__ == "__main__":
    run_main(main)
