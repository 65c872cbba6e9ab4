"""Runs several scripts' main() one after another in ONE python process (or one `accelerate launch` pair),
so the checks of test_multiprocess.py pay the imports once.

    python tests/multiprocess_driver.py PLAN.json OUT_DIR

PLAN.json: [{"name": ..., "script": "task1/...py" or "module": "captioning.caption", "args": [...]}, ...].
For each job it records, per process, how many images that process captioned (OUT_DIR/shares-rank<R>.json:
{job: images}; the split's batches it took, or the images the caption command gave its captioners) and
the job's exit code. LoRA dropout is switched off (the tiny models' other dropout is off in their configs),
so one process and two draw no different masks.
"""
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(plan_path: str, out: str) -> int:
    from captioning import caption, distributed, prefix_llm
    from captioning.config import run_main

    for preset in prefix_llm.LORA.values():
        preset["lora_dropout"] = 0.0
    shares, codes, current = {}, {}, [None]
    real = distributed.my_batches

    def counted(n, batch_size):
        mine = real(n, batch_size)
        shares[current[0]] = shares.get(current[0], 0) + sum(len(items) for _, items in mine)
        return mine

    distributed.my_batches = counted
    real_batch = caption.caption_batch

    def counted_batch(captioners, batch, *args):
        shares[current[0]] = shares.get(current[0], 0) + len(batch)
        return real_batch(captioners, batch, *args)

    caption.caption_batch = counted_batch
    for job in json.loads(Path(plan_path).read_text()):
        current[0] = job["name"]
        start = time.perf_counter()
        if "module" in job:
            module = importlib.import_module(job["module"])
        else:
            spec = importlib.util.spec_from_file_location(f"job_{job['name']}", ROOT / job["script"])
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        try:
            run_main(module.main, [str(a) for a in job["args"]])
            codes[job["name"]] = 0
        except SystemExit as e:
            codes[job["name"]] = e.code
        if distributed.is_main():  # what each job costs the test (its time on this side)
            print(f"driver: {job['name']} took {time.perf_counter() - start:.1f} s", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    rank = distributed.rank_and_world()[0]
    Path(out, f"shares-rank{rank}.json").write_text(json.dumps({"shares": shares, "codes": codes}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
