"""``mkn.attribute`` vs EleutherAI's ``knowledge-neurons`` 0.0.2 (PyPI) on an mBERT-sized BERT.

Issue requirement: on an mBERT-sized BERT (119,547 vocab, 12 layers) mkn is >= 4x faster than
knowledge-neurons 0.0.2 on the same prompt, with scores correlated >= 0.99.

Set-up (no downloads besides the PyPI packages below):

- ``knowledge-neurons==0.0.2`` is installed on first run with ``pip install --no-deps`` into this
  interpreter's environment, together with those of its import-time dependencies that are
  missing (``einops``, ``tqdm``). ``--no-deps`` everywhere, so pip can never touch torch. Its
  declared ``seaborn`` is never imported by the package and is not installed.
- Model: ``BertForMaskedLM`` with mBERT's shape (vocab 119,547, hidden 768, 12 layers, 12 heads,
  FFN 3,072, 512 positions), random weights from a fixed seed, float32, eval mode, one instance
  shared by both implementations (parameters frozen, as ``mkn.wrap`` leaves them; kn asks
  autograd only for the gradient of its patched activations, so it needs no weight gradients).
- Random BERT weights with the default ``initializer_range=0.02`` give a near-uniform output
  (p(paris) ~ 6e-6) and a nearly *linear* p along the IG path: every quadrature rule then gives
  the same scores (left vs trapezoid r = 0.99998) and the correlation check would test nothing.
  So the model gets a non-trivial function: ``initializer_range=0.05`` (logits spread ~1.4, the
  argmax has p ~ 2e-3) and +10 on the MLM decoder bias of ``paris``, so p(paris) ~ 0.12. IG then
  is clearly curved: with 20 steps the completeness gap is ~25% for the left rule, ~4% for the
  trapezoid and ~0 for Gauss-Legendre, much like a real pretrained BERT.
- Tokenizer: a local WordPiece ``BertTokenizerFast`` with exactly 119,547 entries: the five
  special tokens, the words of the prompt, then filler tokens.

Both get the same text: ``The capital of France is [MASK] .`` (kn) and ``... [Y] .`` (mkn, which
puts the tokenizer's [MASK] there), target ``paris``, 20 steps, all 12 layers, zero baseline.

Quadrature: kn evaluates alpha = linspace(0, 1, 20) (both end points) and weights each node
1/20 (the weights sum to 1, so it is a consistent but first-order rule). That is neither mkn's
``left`` rule (alpha = k/20, k < 20, weights 1/20: kn's weights) nor its ``trapezoid`` (kn's
nodes, weights 1/19 with halved ends). Both are reported (on this model ``left`` correlates a
little more closely). A third mkn row runs mkn's engine with kn's exact nodes and weights (an
internal call, not the public API): it must agree with kn to float rounding, which checks that
the two compute the same gradients. A fourth row is ``gauss-legendre`` with fewer steps
(``--gl-steps``, default 8), which is *not* like-for-like in steps: it is shown because its
path integral is more accurate than kn's 20 steps (see the ``gap`` column) at a lower cost.

Columns: "x vs kn10" = kn(batch_size=10) median / median; "x vs best kn" = the faster kn
configuration's median / median (the requirement lines use this one); "pearson r" and "max rel
diff" (``max |s - s_kn| / max |s_kn|`` over all 36,864 neurons) compare with kn(batch_size=10);
"gap" = relative IG completeness gap, ``max_l |sum_i s_li - (p(x) - p(b_l))| / |p(x) - p(b_l)|``
(0 for the exact path integral); peak RSS (MiB) is sampled with psutil during each call, with its
increase over the RSS at the start of the call in parentheses; ``--flops`` adds the matmul FLOPs
of one call (torch.profiler), which unlike seconds do not depend on the load of the machine.

Timing: every implementation is warmed up once, then the implementations run in interleaved
rounds (so that load from other processes hits all of them alike); medians and minima of
``--repeats`` rounds are reported. Other processes on the machine inflate kn's times more than
mkn's (kn runs many more, smaller operations), so run it on an idle machine; ``--threads 1``
gives the most stable ratio.

Usage: ``python benchmarks/bench_vs_knowledge_neurons.py [--repeats 3] [--threads N] [--flops]
[--json PATH]`` (``--profile`` adds a torch.profiler table of one mkn call).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

KN_VERSION = "0.0.2"
# What knowledge_neurons imports at import time besides torch/transformers/numpy (checked in the
# 0.0.2 sdist: knowledge_neurons.py imports einops and tqdm, data.py tqdm; seaborn is declared
# in setup.py but never imported).
KN_IMPORT_DEPS = ("einops", "tqdm")

VOCAB_SIZE = 119_547
KN_PROMPT = "The capital of France is [MASK] ."
MKN_PROMPT = "The capital of France is [Y] ."
TARGET = "paris"
STEPS = 20
WORDS = ("the", "capital", "of", "france", "is", "paris", ".", "berlin", "germany", "rome",
         "italy", "a", "in", "and")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# ----------------------------------------------------------------------------- set-up


def ensure_knowledge_neurons() -> list[str]:
    """Install knowledge-neurons 0.0.2 and its missing import-time deps; returns what was."""
    try:
        installed = importlib.metadata.version("knowledge-neurons")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    wanted = [] if installed == KN_VERSION else [f"knowledge-neurons=={KN_VERSION}"]
    wanted += [name for name in KN_IMPORT_DEPS if importlib.util.find_spec(name) is None]
    if not wanted:
        return []
    torch_before = importlib.metadata.version("torch")
    print(f"installing {' '.join(wanted)} (pip --no-deps) ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *wanted],
                   check=True)
    importlib.invalidate_caches()
    torch_after = importlib.metadata.version("torch")
    if torch_after != torch_before:  # cannot happen with --no-deps; be loud if it ever does
        raise SystemExit(f"pip changed torch from {torch_before} to {torch_after}")
    return wanted


def patch_knowledge_neurons() -> list[str]:
    """Runtime patches kn 0.0.2 needs with transformers 5.x / torch 2.13; returns what was done.

    None so far: with transformers 5.23 and torch 2.13 the BERT path of kn 0.0.2 runs unchanged
    (``bert.encoder.layer[i].intermediate`` is still dense + GELU, the ``Patch`` module's
    in-place write into the GELU output is allowed by autograd, the tokenizer still returns
    ``token_type_ids``, and ``convert_tokens_to_ids`` takes a single token). Kept as the one
    place to add a monkeypatch should a future version break it.
    """
    return []


def build_tokenizer():
    from transformers import BertTokenizerFast

    vocab = list(dict.fromkeys(SPECIAL + WORDS))
    vocab += [f"filler{i}" for i in range(VOCAB_SIZE - len(vocab))]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)},
                                  do_lower_case=True)
    assert len(tokenizer) == VOCAB_SIZE, len(tokenizer)
    return tokenizer


def build_model(tokenizer, seed: int, init_std: float, target_bias: float):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072,
                        max_position_embeddings=512, initializer_range=init_std)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config).to(torch.float32).eval()
    with torch.no_grad():
        model.cls.predictions.bias[tokenizer.convert_tokens_to_ids(TARGET)] += target_bias
    return model


# ----------------------------------------------------------------------------- measuring


class PeakRSS:
    """Peak resident set size (MiB) of this process while the block runs (psutil sampling)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self.start = interval, float("nan"), float("nan")
        try:
            import psutil

            self._proc = psutil.Process()
        except ImportError:
            self._proc = None

    def _rss(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        if self._proc is not None:
            self.start = self.peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.double().flatten().numpy(), b.double().flatten().numpy())[0, 1])


def max_rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-std", type=float, default=0.05, help="BertConfig.initializer_range")
    parser.add_argument("--target-bias", type=float, default=10.0,
                        help="added to the MLM decoder bias of the target token")
    parser.add_argument("--gl-steps", type=int, default=8,
                        help="steps of the extra Gauss-Legendre row (fewer than kn's 20)")
    parser.add_argument("--flops", action="store_true",
                        help="also count matmul FLOPs of one call of each (torch.profiler); "
                             "unlike seconds they do not depend on the load of the machine")
    parser.add_argument("--profile", action="store_true",
                        help="print a torch.profiler table of one mkn call")
    args = parser.parse_args()

    installed = ensure_knowledge_neurons()
    patches = patch_knowledge_neurons()
    import transformers
    from knowledge_neurons import KnowledgeNeurons

    import mkn
    from mkn.attribution.engine import clean_run, integrated_gradients
    from mkn.attribution.queries import encode
    from mkn.models.devices import cpu_model, cpu_summary

    if args.threads:
        torch.set_num_threads(args.threads)
    env = {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "knowledge_neurons": importlib.metadata.version("knowledge-neurons"),
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(),
    }
    for key, value in env.items():
        print(f"{key:>18}: {value}")
    print(cpu_summary(), flush=True)

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, args.seed, args.init_std, args.target_bias)
    lm = mkn.wrap(model, tokenizer, name="mbert-sized-random")  # eval, parameters frozen
    # the same weights in bfloat16, mkn's option where the CPU has bf16 matrix units
    lm_bf16 = mkn.wrap(copy.deepcopy(model).to(torch.bfloat16), tokenizer, name="bf16")
    kn = KnowledgeNeurons(model, tokenizer, model_type="bert", device="cpu")
    attn = model.config._attn_implementation
    print(f"{'model':>18}: BertForMaskedLM vocab {VOCAB_SIZE:,}, 12 layers, 3072 neurons, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, float32, "
          f"attention {attn}, initializer_range {args.init_std}, bias[{TARGET}] "
          f"+{args.target_bias}, seed {args.seed}")

    query = encode(lm, MKN_PROMPT, TARGET)
    kn_ids = tokenizer(KN_PROMPT)["input_ids"]
    assert list(query.steps[0].input_ids) == kn_ids, (query.steps[0].input_ids, kn_ids)
    step = query.steps[0]
    layers = list(range(lm.n_layers))
    kn_alphas = np.linspace(0.0, 1.0, STEPS)
    kn_weights = np.full(STEPS, 1.0 / STEPS)

    def mkn_exact_kn_scheme() -> torch.Tensor:
        clean = clean_run(lm, step).activations
        return integrated_gradients(lm, step, clean, torch.zeros_like(clean), layers,
                                    kn_alphas, kn_weights).scores

    impls: dict[str, Callable[[], torch.Tensor]] = {
        "kn 0.0.2 (batch_size=10)": lambda: kn.get_scores(
            KN_PROMPT, TARGET, batch_size=10, steps=STEPS, pbar=False).detach(),
        "kn 0.0.2 (batch_size=20)": lambda: kn.get_scores(
            KN_PROMPT, TARGET, batch_size=20, steps=STEPS, pbar=False).detach(),
        "mkn rule=left": lambda: mkn.attribute(
            lm, MKN_PROMPT, TARGET, method="ig", steps=STEPS, rule="left").scores,
        "mkn rule=trapezoid": lambda: mkn.attribute(
            lm, MKN_PROMPT, TARGET, method="ig", steps=STEPS, rule="trapezoid").scores,
        "mkn rule=left bfloat16": lambda: mkn.attribute(
            lm_bf16, MKN_PROMPT, TARGET, method="ig", steps=STEPS, rule="left").scores,
        "mkn engine, kn's nodes+weights": mkn_exact_kn_scheme,
        "mkn rule=gauss-legendre": lambda: mkn.attribute(
            lm, MKN_PROMPT, TARGET, method="ig", steps=args.gl_steps,
            rule="gauss-legendre").scores,
    }
    steps_of = {name: args.gl_steps if "gauss" in name else STEPS for name in impls}
    like_for_like = ("mkn rule=left", "mkn rule=trapezoid", "mkn rule=left bfloat16")
    ref_name = "kn 0.0.2 (batch_size=10)"

    probe = mkn.attribute(lm, MKN_PROMPT, TARGET, method="ig", steps=STEPS, rule="trapezoid")
    print(f"{'p(paris)':>18}: {probe.prob:.4f}")

    def completeness_gap(s: torch.Tensor) -> float:
        """max over layers |sum_i s[l, i] - (p(x) - p(b_l))| / |p(x) - p(b_l)|."""
        delta = probe.prob - probe.baseline_prob
        return float(((s.double().sum(-1) - delta) / delta).abs().max())

    times: dict[str, list[float]] = {name: [] for name in impls}
    rss: dict[str, float] = {name: float("nan") for name in impls}
    rss_delta: dict[str, float] = {name: float("nan") for name in impls}
    scores: dict[str, torch.Tensor] = {}
    print("warm-up ...", flush=True)
    for name, fn in impls.items():
        with PeakRSS() as mem:
            scores[name] = fn()
        rss[name], rss_delta[name] = mem.peak, mem.peak - mem.start
    for r in range(args.repeats):
        for name, fn in impls.items():
            with PeakRSS() as mem:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
            rss[name] = max(rss[name], mem.peak)
            rss_delta[name] = max(rss_delta[name], mem.peak - mem.start)
        print(f"round {r + 1}/{args.repeats}: "
              + ", ".join(f"{name} {t[-1]:.1f}s" for name, t in times.items()), flush=True)

    flops: dict[str, float] = {name: float("nan") for name in impls}
    if args.flops:
        from torch.profiler import ProfilerActivity, profile

        for name, fn in impls.items():
            with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
                fn()
            flops[name] = sum(event.flops for event in prof.key_averages()) / 1e9

    kn_names = [name for name in impls if name.startswith("kn")]
    kn_best = min(statistics.median(times[name]) for name in kn_names)
    ref = scores[ref_name]
    rows = []
    for name in impls:
        median = statistics.median(times[name])
        rows.append({
            "implementation": name, "steps": steps_of[name], "median_s": median,
            "min_s": min(times[name]),
            "times_s": times[name],
            "speedup_vs_kn_bs10": statistics.median(times[ref_name]) / median,
            "speedup_vs_best_kn": kn_best / median,
            "pearson_vs_kn": pearson(scores[name], ref),
            "max_rel_diff_vs_kn": max_rel_diff(scores[name], ref),
            "completeness_gap": completeness_gap(scores[name]),
            "peak_rss_mib": rss[name], "peak_rss_increase_mib": rss_delta[name],
            "gflop": flops[name],
        })

    header = (f"{'implementation':<32} {'steps':>5} {'median s':>9} {'min s':>7} "
              f"{'x vs kn10':>9} {'x vs best kn':>12} {'pearson r':>10} {'max rel diff':>12} "
              f"{'gap':>7} {'peak RSS MiB':>13}"
              + (f" {'GFLOP':>7}" if args.flops else ""))
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['implementation']:<32} {row['steps']:>5} {row['median_s']:>9.2f} "
              f"{row['min_s']:>7.2f} {row['speedup_vs_kn_bs10']:>9.2f} "
              f"{row['speedup_vs_best_kn']:>12.2f} {row['pearson_vs_kn']:>10.6f} "
              f"{row['max_rel_diff_vs_kn']:>12.2e} {row['completeness_gap']:>7.4f} "
              f"{row['peak_rss_mib']:>6.0f} (+{row['peak_rss_increase_mib']:.0f})"
              + (f" {row['gflop']:>7.1f}" if args.flops else ""))
    rule_r = pearson(scores["mkn rule=left"], scores["mkn rule=trapezoid"])
    print(f"\nmkn left vs trapezoid: r = {rule_r:.6f} (how much the rule matters on this model)")
    print("gap = relative IG completeness gap (max over layers; 0 = exact path integral)")
    verdict = {}
    for row in rows:
        name = row["implementation"]
        if not name.startswith("mkn rule="):
            continue
        ok = row["speedup_vs_best_kn"] >= 4 and row["pearson_vs_kn"] >= 0.99
        verdict[name] = ok
        kind = "same steps" if name in like_for_like else f"{row['steps']} steps"
        print(f"requirement (>= 4x vs the faster kn, r >= 0.99), {name} ({kind}): "
              f"{'PASS' if ok else 'FAIL'} ({row['speedup_vs_best_kn']:.2f}x, "
              f"r = {row['pearson_vs_kn']:.6f})")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            impls["mkn rule=trapezoid"]()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "env": env, "installed": installed, "kn_patches": patches,
            "model": {"vocab_size": VOCAB_SIZE, "layers": 12, "neurons": 3072,
                      "initializer_range": args.init_std, "target_bias": args.target_bias,
                      "seed": args.seed, "attention": attn, "p_target": probe.prob},
            "prompt_kn": KN_PROMPT, "prompt_mkn": MKN_PROMPT, "target": TARGET, "steps": STEPS,
            "repeats": args.repeats, "rows": rows, "requirement_pass": verdict,
        }, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
