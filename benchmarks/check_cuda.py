"""mkn on a CUDA GPU: the same numbers as on the CPU, the user's model left as found, and speed.

Random-weight models built from real configurations (no download: the GPU machine has no
internet), each check against the CPU in float32:

1. ``resolve_device("auto")`` / ``resolve_dtype("auto")`` pick cuda and bfloat16;
2. IG and AMIG attributions on cuda equal those on the CPU (float32, to 1e-4 of the largest);
3. intervention rows (:func:`mkn.attribution.scoring.score_rows`), staggered and not, equal the
   CPU's; causal tracing of the positions read equals the full grid;
4. a weight edit is undone bit for bit, and attributing leaves the model's modes, parameters and
   ``requires_grad`` as they were;
5. seconds per attribution (20 steps, every layer) of gemma-3-270m- and qwen2.5-1.5b-sized models
   in bfloat16 and float32, one warm-up first.

Prints a Markdown report and exits non-zero if a check fails.

    python benchmarks/check_cuda.py [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.tiny_models: a small causal tokenizer

from tests.tiny_models import causal_tokenizer  # noqa: E402

import mkn  # noqa: E402
from mkn.attribution import scoring  # noqa: E402
from mkn.attribution.queries import encode  # noqa: E402
from mkn.attribution.scoring import score_rows  # noqa: E402
from mkn.interventions.weights import replace_object  # noqa: E402
from mkn.localization.tracing import causal_trace  # noqa: E402
from mkn.models.devices import resolve_device, resolve_dtype  # noqa: E402

PROMPT, TARGET, SUBJECT = "The capital of France is", "Paris", "France"
# model_type and the sizes of each model's published config.json
CONFIGS = {
    "gemma-3-270m": ("gemma3_text", dict(vocab_size=262144, hidden_size=640,
                                         intermediate_size=2048, num_hidden_layers=18,
                                         num_attention_heads=4, num_key_value_heads=1,
                                         head_dim=256)),
    "qwen2.5-1.5b": ("qwen2", dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                   num_hidden_layers=28, num_attention_heads=12,
                                   num_key_value_heads=2, tie_word_embeddings=True)),
}
SMALL = dict(vocab_size=512, num_hidden_layers=4)  # the correctness checks' size

failures: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"| {name} | {'pass' if ok else 'FAIL'} | {detail} |", flush=True)
    if not ok:
        failures.append(name)


def build(name: str, device: str, dtype: torch.dtype, small: bool = False):
    model_type, sizes = CONFIGS[name]
    config = transformers.AutoConfig.for_model(model_type, **{**sizes, **(SMALL if small else {})})
    torch.manual_seed(0)
    # the small models are drawn on the CPU (the same weights on both devices); the large ones
    # on the device (faster, and only their speed is read)
    with torch.device("cpu" if small else device):
        model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    return mkn.wrap(model.to(device), causal_tokenizer(), name=name)


def state(model: torch.nn.Module) -> tuple:
    return (model.training, [p.requires_grad for p in model.parameters()],
            {k: v.detach().clone() for k, v in model.state_dict().items()})


def correctness(device: str) -> None:
    picked = resolve_device("auto")
    dtype, why = resolve_dtype("auto", picked)
    check("auto device and dtype", picked.type == "cuda" and dtype == torch.bfloat16,
          f"{picked}, {why}")
    for name in CONFIGS:
        cpu, gpu = build(name, "cpu", torch.float32, True), build(name, device, torch.float32,
                                                                  True)
        for method in ("ig", "amig"):
            a = mkn.attribute(cpu, PROMPT, TARGET, method=method, steps=8)
            b = mkn.attribute(gpu, PROMPT, TARGET, method=method, steps=8)
            gap = float((a.scores - b.scores.cpu()).abs().max() / a.scores.abs().max())
            check(f"{name}: {method} on {device} = cpu (float32)", gap < 1e-4,
                  f"largest difference {gap:.2e} of the largest score")
        rows = [encode(lm, PROMPT, TARGET) for lm in (cpu, gpu)]
        interventions = [{layer: ([1, 5, 9], 0.0)} for layer in range(cpu.n_layers)] + [None]
        plain = [p.prob for p in score_rows(cpu, [rows[0]] * len(interventions), interventions)]
        for stagger, label in ((1.0, "staggered"), (1e9, "unstaggered")):
            old, scoring.STAGGER_GAIN = scoring.STAGGER_GAIN, stagger
            try:
                got = [p.prob for p in score_rows(gpu, [rows[1]] * len(interventions),
                                                  interventions)]
            finally:
                scoring.STAGGER_GAIN = old
            gap = max(abs(x - y) for x, y in zip(plain, got, strict=True))
            check(f"{name}: intervention rows on {device}, {label} = cpu", gap < 1e-5,
                  f"largest |dp| {gap:.2e}")
        full = causal_trace(cpu, PROMPT, TARGET, SUBJECT, samples=4)
        part = causal_trace(gpu, PROMPT, TARGET, SUBJECT, samples=4, kinds=("mlp",),
                            at={"mlp": ("subject",)})
        gap = float((full.layer_profile("mlp") - part.layer_profile("mlp")).abs().max())
        check(f"{name}: traced positions on {device} = cpu full grid", gap < 1e-5,
              f"largest difference {gap:.2e}")
        before = state(gpu.model)
        edit = replace_object(gpu, [(1, 3), (2, 7)], PROMPT, TARGET, "Rome")
        edit.undo()
        mkn.attribute(gpu, PROMPT, TARGET, method="amig", steps=4)
        after = state(gpu.model)
        same = before[0] == after[0] and before[1] == after[1] and all(
            torch.equal(before[2][k], after[2][k]) for k in before[2])
        check(f"{name}: the model as found after an edit and an attribution", same,
              "modes, requires_grad and every weight bit for bit")


def speed(device: str) -> None:
    print("\n| model | parameters | dtype | s per attribution (20 steps) | peak GiB |\n"
          "|---|---|---|---|---|", flush=True)
    for name in CONFIGS:
        for dtype in (torch.bfloat16, torch.float32):
            lm = build(name, device, dtype)
            torch.cuda.reset_peak_memory_stats()
            mkn.attribute(lm, PROMPT, TARGET, method="amig", steps=20)  # warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            mkn.attribute(lm, PROMPT, TARGET, method="amig", steps=20)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            print(f"| {name} | {sum(p.numel() for p in lm.model.parameters()) / 1e9:.2f} B | "
                  f"{str(dtype).removeprefix('torch.')} | {seconds:.3f} | "
                  f"{torch.cuda.max_memory_allocated() / 2**30:.2f} |", flush=True)
            del lm
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-speed", action="store_true")
    args = parser.parse_args()
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda'}\n\n"
          "| check | result | detail |\n|---|---|---|", flush=True)
    correctness(args.device)
    if not args.no_speed:
        speed(args.device)
    if failures:
        sys.exit(f"{len(failures)} checks failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
