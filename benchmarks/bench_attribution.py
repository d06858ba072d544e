"""Speed and memory of ``mkn.attribute`` on the real default model.

Compares, on one prompt, 20 steps, all layers, in one run on the same machine:
- ``mkn`` fast path (prefix KV cache, (layer, step) rows batched, logits at one position);
- ``straightforward``: per layer, a batch of ``steps`` full sequences with full logits, the way
  EleutherAI's knowledge-neurons and AMIG compute it (``tests/reference_ig.py``);
- ``floor``: only the LM-head forward+backward for steps x layers rows, which every exact method
  must pay (the final hidden state -> logits -> p(target) -> gradient w.r.t. the hidden state),
  timed with both mkn's in-place gradient and plain autograd through ``log_softmax``; the
  faster of the two is the floor.

Each measurement runs in its own process, so peak RSS (memory) is its own.
Usage: ``python benchmarks/bench_attribution.py [--model gemma-3-270m] [--repeats 3] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import platform
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


def measure(kind: str, model_name: str, repeats: int) -> dict:
    """Run one kind of measurement in this process; returns seconds and peak RSS."""
    import torch

    import mkn
    from mkn.attribution.queries import encode

    lm = mkn.load_model(model_name)
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
        torch.save(result, ROOT / f".bench-{kind}.pt")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "seconds": statistics.median(times), "all_seconds": times,
            "peak_rss_mb": peak_mb, "rows": rows, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, args.model, args.repeats)))
        return
    results = {}
    kinds = (("floor", args.repeats), ("floor-plain", args.repeats), ("mkn", args.repeats),
             ("straightforward", 1))
    for kind, repeats in kinds:
        out = subprocess.run([sys.executable, __file__, "--only", kind, "--model", args.model,
                              "--repeats", str(repeats)], capture_output=True, text=True,
                             check=True)
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    import torch

    if results["floor-plain"]["seconds"] < results["floor"]["seconds"]:
        results["floor"] = results["floor-plain"]
    del results["floor-plain"]
    agree = torch.testing.assert_close
    fast, plain = (torch.load(ROOT / f".bench-{k}.pt") for k in ("mkn", "straightforward"))
    agree(fast, plain, rtol=1e-3, atol=1e-4 * float(plain.abs().max()))
    for k in ("mkn", "straightforward"):
        (ROOT / f".bench-{k}.pt").unlink()
    floor, fast_s, plain_s = (results[k]["seconds"] for k in ("floor", "mkn", "straightforward"))
    print(f"model {args.model}; prompt {PROMPT!r} -> {TARGET!r}; {STEPS} steps, all layers "
          f"({results['mkn']['rows']} rows); torch {torch.__version__}, "
          f"{results['mkn']['threads']} threads; {platform.processor() or platform.machine()}")
    print(f"{'implementation':<18}{'seconds':>10}{'vs floor':>10}{'speed-up':>10}{'peak MB':>10}")
    for kind in ("floor", "mkn", "straightforward"):
        r = results[kind]
        print(f"{kind:<18}{r['seconds']:>10.2f}{r['seconds'] / floor:>9.2f}x"
              f"{plain_s / r['seconds']:>9.1f}x{r['peak_rss_mb']:>10.0f}")
    print(f"mkn equals straightforward (rtol 1e-3); mkn is {plain_s / fast_s:.1f}x faster than "
          f"straightforward and {fast_s / floor:.2f}x the floor")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
