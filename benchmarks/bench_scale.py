"""How mkn scales: the real model's locate throughput, and bigger models' cost per attribution.

1. a real model (``--real-model``, default gemma-3-270m), ``locate_fact`` with ``amig`` on
   built-in facts in two languages (every item,
   ``known=any``), at 12 and 20 steps, float32 and bfloat16: attributions per second and
   (fact, language) items per hour.
2. Random-weight models built from the configurations of real multilingual models (no
   download: the sizes are written below from their published config.json): seconds per
   attribution (20 steps, every layer, one warm-up first) and peak resident memory, each in its
   own process, against the parameter count; rows per pass as chosen by the memory-aware
   batching (:func:`mkn.attribution.engine.default_batch_size`).

On a GPU machine (``--device cuda``) the same runs report GPU peak memory instead.
Usage: ``python benchmarks/bench_scale.py [--device cpu] [--dtype float32] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# model_type and the sizes of each model's published config.json
CONFIGS = {
    "bloom-560m": ("bloom", dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16)),
    "mgpt-1.3b": ("gpt2", dict(vocab_size=100000, n_embd=2048, n_layer=24, n_head=16,
                               n_positions=2048)),
    "llama-3.2-1b": ("llama", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                                   num_hidden_layers=16, num_attention_heads=32,
                                   num_key_value_heads=8, tie_word_embeddings=True)),
    "qwen2.5-1.5b": ("qwen2", dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                   num_hidden_layers=28, num_attention_heads=12,
                                   num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-3.1-8b": ("llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                   num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=8)),
}
CPU_MODELS = ("bloom-560m", "mgpt-1.3b", "llama-3.2-1b", "qwen2.5-1.5b")
PROMPT, TARGET = "The capital of France is", "Paris"


def _peak_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def random_model(name: str, dtype: str, device: str) -> dict:
    """Seconds per attribution of a random-weight model with ``name``'s configuration."""
    sys.path.insert(0, str(ROOT))  # tests.tiny_models: a small causal tokenizer
    import torch
    import transformers
    from tests.tiny_models import causal_tokenizer

    import mkn
    from mkn.attribution.engine import default_batch_size
    from mkn.models.loading import wrap

    model_type, sizes = CONFIGS[name]
    config = transformers.AutoConfig.for_model(model_type, **sizes)
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    lm = wrap(model, causal_tokenizer(), name=name)
    build = time.perf_counter() - started
    mkn.attribute(lm, PROMPT, TARGET, method="amig", steps=20)  # warm-up
    started = time.perf_counter()
    mkn.attribute(lm, PROMPT, TARGET, method="amig", steps=20)
    seconds = time.perf_counter() - started
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
            "layers": lm.n_layers, "neurons": lm.n_neurons,
            "vocab": config.get_text_config().vocab_size, "dtype": dtype, "device": device,
            "rows_per_pass": default_batch_size(lm), "build_seconds": round(build, 1),
            "seconds_per_attribution": round(seconds, 2),
            "peak_gib": round(_peak_bytes(device) / 2**30, 2)}


def real_locate(model: str, steps: int, dtype: str, device: str, facts: int) -> dict:
    """``locate_fact`` throughput on the real ``model``."""
    import mkn
    from mkn.data import load_facts
    from mkn.localization.knowledge import known_items
    from mkn.localization.locate import LocateConfig, locate_fact

    lm = mkn.load_model(model, dtype=dtype, device=device)
    languages = ["en", "fr"]
    sample = load_facts("builtin", languages, limit=facts, per_relation=2)
    config = LocateConfig(method="amig", steps=steps, max_queries=2, known="any",
                          degenerate=False)
    known = known_items(lm, sample, languages, "any")
    locate_fact(lm, sample[0], languages, config, {}, known)  # warm-up
    started = time.perf_counter()
    attributions = 0
    for fact in sample:
        result = locate_fact(lm, fact, languages, config, {}, known)
        attributions += sum(len(r.prompts) for r in result.languages.values())
    seconds = time.perf_counter() - started
    items = len(sample) * len(languages)
    return {"model": model, "steps": steps, "dtype": dtype, "device": device,
            "items": items, "attributions": attributions, "seconds": round(seconds, 1),
            "attributions_per_second": round(attributions / seconds, 2),
            "items_per_hour": round(items / seconds * 3600),
            "peak_gib": round(_peak_bytes(device) / 2**30, 2)}


def _child(kind: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, *args],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"model": args[0],
                "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="random-weight models' dtype")
    parser.add_argument("--models", type=lambda s: [m for m in s.split(",") if m],
                        default=list(CPU_MODELS), help="random-weight models (\"\": none)")
    parser.add_argument("--real-model", default="gemma-3-270m",
                        help="the real model of part 1 (any name mkn.load_model takes)")
    parser.add_argument("--facts", type=int, default=8, help="real-model locate sample")
    parser.add_argument("--skip-gemma", "--skip-real", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "random":
            print(json.dumps(random_model(rest[0], rest[1], rest[2])))
        else:
            print(json.dumps(real_locate(rest[0], int(rest[1]), rest[2], rest[3], int(rest[4]))))
        return

    from mkn.models.devices import cpu_summary

    print(f"# {cpu_summary()}; device {args.device}", flush=True)
    results = {"real": [], "random": []}
    if not args.skip_gemma:
        print(f"{args.real_model}:\n| steps | dtype | items | attributions | seconds | "
              "attributions/s | items/hour | peak GiB |\n|---|---|---|---|---|---|---|---|",
              flush=True)
        for steps in (12, 20):
            for dtype in ("float32", "bfloat16"):
                row = _child("real", args.real_model, str(steps), dtype, args.device,
                             str(args.facts))
                results["real"].append(row)
                print(f"| {steps} | {dtype} | {row.get('items')} | {row.get('attributions')} | "
                      f"{row.get('seconds')} | {row.get('attributions_per_second')} | "
                      f"{row.get('items_per_hour')} | {row.get('peak_gib')} |"
                      + (f" {row['error']}" if "error" in row else ""), flush=True)
    print("\n| model | parameters | layers x neurons | vocab | dtype | rows per pass | "
          "s per attribution | peak GiB |\n|---|---|---|---|---|---|---|---|", flush=True)
    for name in args.models:
        row = _child("random", name, args.dtype, args.device)
        results["random"].append(row)
        if "error" in row:
            print(f"| {name} | error: {row['error']} |", flush=True)
            continue
        print(f"| {name} | {row['parameters'] / 1e9:.2f} B | {row['layers']} x {row['neurons']} "
              f"| {row['vocab']} | {row['dtype']} | {row['rows_per_pass']} | "
              f"{row['seconds_per_attribution']} | {row['peak_gib']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
