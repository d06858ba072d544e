"""Speed and memory of ``mkn.attribute`` on the real default model.

Compares, on one prompt, 20 steps, all layers, in one run on the same machine:
- ``mkn`` fast path (prefix KV cache, (layer, step) rows batched, logits at one position);
- ``straightforward``: per layer, a batch of ``steps`` full sequences with full logits, the way
  EleutherAI's knowledge-neurons and AMIG compute it (``tests/reference_ig.py``);
- ``floor``: only the LM-head forward+backward for steps x layers rows, which every exact method
  must pay (the final hidden state -> logits -> p(target) -> gradient w.r.t. the hidden state),
  timed with both mkn's in-place gradient and plain autograd through ``log_softmax``; the
  faster of the two is the floor.

The floor and mkn are timed in every dtype of ``--dtypes`` (default float32, bfloat16 and auto:
what ``--dtype auto`` picks on this CPU); the straightforward loop in float32. The CPU, its flags
and whether it computes bf16 natively are printed first: bfloat16 is faster only on a CPU with
bf16 units (AVX512-BF16/AMX), and ~17x slower where it is emulated (AVX2 only).

Each measurement runs in its own process, so peak RSS (memory) is its own.
Usage: ``python benchmarks/bench_attribution.py [--model gemma-3-270m] [--repeats 3]
[--dtypes float32,bfloat16,auto] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT, TARGET, STEPS = "The capital of France is", "Paris", 20


def _autograd_target_prob(logits, target_id: int):
    import torch

    return torch.log_softmax(logits.float(), dim=-1)[:, target_id].exp()


def _floor(lm, rows: int, target_id: int, plain: bool = False) -> None:
    import torch

    from mkn.attribution.engine import target_prob

    if plain:
        target_prob = _autograd_target_prob  # noqa: F811
    model = lm.model
    hidden = torch.randn(rows, 1, model.config.hidden_size, dtype=lm.dtype, requires_grad=True)
    normed = model.base_model.norm(hidden) if hasattr(model.base_model, "norm") else hidden
    logits = model.get_output_embeddings()(normed)[:, -1]
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    torch.autograd.grad(target_prob(logits, target_id).sum(), hidden)


def measure(kind: str, model_name: str, repeats: int, dtype: str = "float32") -> dict:
    """Run one kind of measurement in this process; returns seconds and peak RSS."""
    import torch

    import mkn
    from mkn.attribution.queries import encode

    lm = mkn.load_model(model_name, dtype=dtype)
    target_id = encode(lm, PROMPT, TARGET).target_ids[0]
    rows = STEPS * lm.n_layers
    if kind == "mkn":
        def run():
            return mkn.attribute(lm, PROMPT, TARGET, method="ig", steps=STEPS).scores
    elif kind == "straightforward":
        sys.path.insert(0, str(ROOT))
        from tests.reference_ig import reference_attribute

        def run():
            return reference_attribute(lm, PROMPT, TARGET, "ig", STEPS, "left")
    elif kind in ("floor", "floor-plain"):
        def run():
            return _floor(lm, rows, target_id, plain=kind == "floor-plain")
    else:
        raise ValueError(kind)
    run()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    if isinstance(result, torch.Tensor):
        torch.save(result.float(), ROOT / f".bench-{kind}-{dtype}.pt")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "dtype": str(lm.dtype).removeprefix("torch."),
            "choice": lm.dtype_choice, "seconds": statistics.median(times),
            "all_seconds": times, "peak_rss_mb": peak_mb, "rows": rows,
            "threads": torch.get_num_threads()}


def _child(kind: str, args, repeats: int, dtype: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--only", kind, "--model", args.model,
                          "--repeats", str(repeats), "--dtypes", dtype], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16,auto")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, args.model, args.repeats, args.dtypes)))
        return
    import torch

    from mkn.models.devices import cpu_summary

    print(cpu_summary(), flush=True)
    rows = []
    for dtype in args.dtypes.split(","):
        floor = min((_child(k, args, args.repeats, dtype) for k in ("floor", "floor-plain")),
                    key=lambda r: r["seconds"])
        rows += [{**floor, "kind": "floor", "asked": dtype},
                 {**_child("mkn", args, args.repeats, dtype), "asked": dtype}]
    plain = {**_child("straightforward", args, 1, "float32"), "asked": "float32"}
    rows.append(plain)
    fast = torch.load(ROOT / ".bench-mkn-float32.pt") if (
        ROOT / ".bench-mkn-float32.pt").exists() else None
    reference = torch.load(ROOT / ".bench-straightforward-float32.pt")
    if fast is not None:
        torch.testing.assert_close(fast, reference, rtol=1e-3,
                                   atol=1e-4 * float(reference.abs().max()))
    for path in ROOT.glob(".bench-*.pt"):
        path.unlink()
    floors = {r["asked"]: r["seconds"] for r in rows if r["kind"] == "floor"}
    print(f"model {args.model}; prompt {PROMPT!r} -> {TARGET!r}; {STEPS} steps, all layers "
          f"({plain['rows']} rows); {plain['threads']} threads")
    print("| implementation | dtype asked | dtype | seconds | vs floor (same dtype) | "
          "speed-up vs straightforward | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        floor = floors.get(r["asked"], floors.get("float32"))
        print(f"| {r['kind']} | {r['asked']} | {r['dtype']} | {r['seconds']:.2f} | "
              f"{r['seconds'] / floor:.2f}x | {plain['seconds'] / r['seconds']:.1f}x | "
              f"{r['peak_rss_mb']:.0f} |")
    for r in rows:
        if r["asked"] == "auto" and r["kind"] == "mkn":
            print(f"--dtype {r['choice']}")
    if fast is not None:
        print("mkn float32 equals straightforward (rtol 1e-3)")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_summary(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
