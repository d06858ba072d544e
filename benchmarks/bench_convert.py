"""GGUF -> safetensors conversion: seconds and peak RSS per model (issue 24).

Each conversion runs in a fresh subprocess (peak RSS is the child's own ``ru_maxrss``), into a
temporary cache, so a cached conversion is never measured. ``--in-memory`` also measures
transformers' own loader (``from_pretrained(gguf_file=...)``, what mkn used before) for
comparison; ``--skip-in-memory-above GB`` leaves it out for GGUF files above that size, where
it would need too much memory.

    .venv/bin/python benchmarks/bench_convert.py gemma-3-270m qwen2.5-coder-0.5b \\
        qwen2.5-coder-1.5b --in-memory --skip-in-memory-above 0.6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
from mkn.models import loading
from mkn.models.named import NAMED_MODELS, assemble

name, mode, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
started = time.perf_counter()
if name in NAMED_MODELS:
    gguf = assemble(NAMED_MODELS[name], loading.cache_dir() / "gguf")
elif name in loading.EMBEDDED_MODELS:
    gguf = loading._embedded_gguf(name)
else:
    gguf = Path(name)
assembled = time.perf_counter() - started
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
started = time.perf_counter()
if mode == "streamed":
    loading.convert_gguf(gguf, out)
else:
    import transformers
    config = transformers.AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = loading._auto_class(config.model_type).from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
seconds = time.perf_counter() - started
cached = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 2**30 if out.exists() else None
print(json.dumps({"model": name, "mode": mode, "gguf_gb": gguf.stat().st_size / 2**30,
                  "assemble_s": assembled, "convert_s": seconds, "rss_before_gb": base,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "cached_weights_gb": cached}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--in-memory", action="store_true")
    parser.add_argument("--skip-in-memory-above", type=float, default=None, metavar="GB")
    args = parser.parse_args()
    from mkn.models.devices import cpu_summary

    print(f"# {cpu_summary()}")
    rows = []
    for name in args.models:
        for mode in ("streamed", "in-memory") if args.in_memory else ("streamed",):
            with tempfile.TemporaryDirectory() as tmp:
                done = subprocess.run([sys.executable, "-c", CHILD, name, mode, f"{tmp}/model"],
                                      capture_output=True, text=True)
                if done.returncode:
                    print(done.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{name} ({mode}) failed")
                row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.skip_in_memory_above is not None and row["gguf_gb"] > \
                    args.skip_in_memory_above:
                break
    print("\n| model | conversion | GGUF GB | seconds | peak RSS GB | cached weights GB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cached = f"{r['cached_weights_gb']:.2f}" if r["cached_weights_gb"] else "-"
        print(f"| {r['model']} | {r['mode']} | {r['gguf_gb']:.2f} | {r['convert_s']:.0f} | "
              f"{r['peak_rss_gb']:.2f} | {cached} |")


if __name__ == "__main__":
    main()
