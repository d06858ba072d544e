"""What "the same results" means across threads (README, "Same results"): one attribution
computed twice on the same number of threads gives the same bytes; on 1 and on 2 threads, the
scores agree within :data:`mkn.models.devices.THREAD_TOLERANCE` of the largest |score|."""

from __future__ import annotations

import torch

import mkn
from mkn.models.devices import THREAD_TOLERANCE, within_thread_tolerance
from tests.tiny_models import build, torch_threads

PROMPT, TARGET = "The capital of France is", "Paris"


def _wide_llama():
    """A tiny Llama with layers wide enough (1,536 neurons) for the kernels to split work
    between threads."""
    return build("llama", cached=False, intermediate_size=1536, hidden_size=128,
                 num_attention_heads=4, num_key_value_heads=4, head_dim=32)


def test_one_attribution_on_one_and_two_threads_keeps_the_promise():
    lm = _wide_llama()
    runs = {}
    for threads in (1, 1, 2, 2):
        with torch_threads(threads):
            result = mkn.attribute(lm, PROMPT, TARGET, method="amig", steps=8, batch_size=5)
        runs.setdefault(threads, []).append(result)
    for threads, (first, second) in runs.items():  # same threads: byte-identical
        assert first.scores.numpy().tobytes() == second.scores.numpy().tobytes(), threads
        assert first.prob == second.prob
    one, two = runs[1][0], runs[2][0]
    assert within_thread_tolerance(one.scores, two.scores), (
        float((one.scores - two.scores).abs().max()), float(one.scores.abs().max()))
    assert abs(one.prob - two.prob) <= THREAD_TOLERANCE["float32"] * one.prob


def test_the_tolerance_check_refuses_a_real_difference():
    scores = torch.linspace(-1, 1, 64).reshape(2, 32)
    assert within_thread_tolerance(scores, scores.clone())
    nudged = scores.clone()
    nudged[0, 0] += 0.5 * THREAD_TOLERANCE["float32"]
    assert within_thread_tolerance(scores, nudged)
    nudged[1, 3] += 10 * THREAD_TOLERANCE["float32"]
    assert not within_thread_tolerance(scores, nudged)
    assert within_thread_tolerance(scores.bfloat16(), (scores + 1e-3).bfloat16())
