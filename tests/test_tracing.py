"""Causal tracing (ROME, Meng et al. 2022) on tiny models with a planted mechanism."""

from __future__ import annotations

import pytest
import torch

from mkn.localization.tracing import causal_trace, subject_positions
from tests import tiny_models as tm

PROMPT = "The capital of France is"


@pytest.fixture(autouse=True)
def _one_thread():
    with tm.torch_threads(1):
        yield


def planted(only: int, layers: int = 4, family: str = "llama"):
    """A tiny model whose MLPs are all switched off (output projection zero) except layer
    ``only``'s: every MLP effect of the fact must come from that layer."""
    lm = tm.build(family, cached=False, num_hidden_layers=layers)
    with torch.no_grad():
        for layer in range(layers):
            if layer != only:
                lm.down_proj(layer).weight.zero_()
    return lm


@pytest.mark.parametrize("only", [1, 2])
def test_the_mlp_trace_peaks_at_the_one_layer_whose_mlp_carries_the_fact(only):
    lm = planted(only)
    trace = causal_trace(lm, PROMPT, "Paris", "France", samples=6)
    mlp = trace.effects["mlp"]
    assert trace.clean_prob != trace.corrupted_prob  # the noise reaches the prediction
    others = [layer for layer in range(lm.n_layers) if layer != only]
    # restoring an MLP that outputs nothing does nothing (up to batch-shape rounding)
    assert mlp[only].abs().max() > 1e4 * mlp[others].abs().max()
    assert trace.peak("mlp")[0] == only


def test_structural_truths_of_the_hidden_trace():
    lm = tm.build("gpt2", cached=False)
    trace = causal_trace(lm, PROMPT, "New York", "France", kinds=("hidden",), samples=5)
    hidden = trace.effects["hidden"]
    assert trace.subject_positions == [4] and trace.tokens[4] == "France"
    # the last block's output at the prediction position is the whole prediction
    assert hidden[-1, -1] == pytest.approx(trace.clean_prob - trace.corrupted_prob, abs=1e-6)
    # states before the subject are not touched by its noise: restoring them does nothing
    assert hidden[:, :4].abs().max() < 1e-7
    assert trace.layer_profile("hidden").shape == (lm.n_layers,)


@pytest.mark.parametrize("window", [1, 3])
def test_tracing_only_the_positions_read_gives_the_full_grid_there(window):
    """``at`` restores only the positions a caller reads, several layers share a pass: the
    numbers are those of the full grid, one layer per pass (float32: to rounding)."""
    lm = tm.build("llama", cached=False, num_hidden_layers=4)
    full = causal_trace(lm, PROMPT, "Paris", "France", samples=4, window=window,
                        rows_per_pass=1)  # one layer per pass
    last = len(full.tokens) - 1
    part = causal_trace(lm, PROMPT, "Paris", "France", samples=4, window=window,
                        kinds=("mlp", "attn"), at={"mlp": ("subject", "prediction"),
                                                   "attn": ("prediction", 1)})
    assert part.corrupted_prob == pytest.approx(full.corrupted_prob, abs=1e-7)
    subject = full.subject_positions[-1]
    torch.testing.assert_close(part.layer_profile("mlp"), full.layer_profile("mlp"),
                               atol=1e-6, rtol=1e-5)
    for kind, columns in (("mlp", [subject, last]), ("attn", [1, last])):
        torch.testing.assert_close(part.effects[kind][:, columns],
                                   full.effects[kind][:, columns], atol=1e-6, rtol=1e-5)
        untraced = [t for t in range(len(full.tokens)) if t not in columns]
        assert part.effects[kind][:, untraced].isnan().all()  # not traced, not made up
    assert "hidden" not in part.effects
    assert part.peak("mlp")[1] in (subject, last)  # the peak is among traced positions


def test_bad_requests_are_one_line():
    lm = tm.tiny("llama")
    with pytest.raises(ValueError, match="subject 'Spain' is not in the prompt"):
        causal_trace(lm, PROMPT, "Paris", "Spain")
    with pytest.raises(ValueError, match="kinds must be among hidden, mlp, attn"):
        causal_trace(lm, PROMPT, "Paris", "France", kinds=("resid",))
    with pytest.raises(ValueError, match="unknown position 'object'"):
        causal_trace(lm, PROMPT, "Paris", "France", at={"mlp": ("object",)})
    with pytest.raises(ValueError, match="position 40 is outside the prompt's"):
        causal_trace(lm, PROMPT, "Paris", "France", at={"mlp": (40,)})
    with pytest.raises(ValueError, match="masked LM"):
        causal_trace(tm.tiny("bert"), PROMPT + " [Y] .", "Paris", "France")
    assert subject_positions(lm, "France is", "France") == [1]  # after BOS


def test_the_trace_command(tiny_dir):
    import json

    from typer.testing import CliRunner

    from mkn.cli import app

    args = ["trace", "--model", str(tiny_dir / "model"), "--prompt", PROMPT, "--target",
            "Paris", "--subject", "France", "--samples", "3"]
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "subject corrupted" in shown.output and "mlp: largest effect" in shown.output
    payload = json.loads(CliRunner().invoke(app, [*args, "--json"]).output.splitlines()[-1])
    assert len(payload["effects"]["hidden"]) == 2 and payload["subject_positions"] == [4]
    bad = CliRunner().invoke(app, [*args[:-4], "--subject", "Spain"])
    assert bad.exit_code == 2 and "subject 'Spain' is not in the prompt" in bad.output
