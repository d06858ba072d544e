"""Devices, memory-aware batches and out-of-memory backoff (CPU-only checks)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import mkn
from mkn.attribution.engine import StepRunner, default_batch_size
from mkn.cli import app
from mkn.models import devices
from mkn.models.loading import wrap
from tests.tiny_models import knowing

runner = CliRunner()
PROMPT, TARGET = "The capital of France is", "Paris"


def test_out_of_memory_halves_the_batch_and_gives_the_same_scores(monkeypatch, caplog):
    lm = knowing("llama")
    free = mkn.attribute(lm, PROMPT, TARGET, method="amig", steps=8, batch_size=16)
    real_probs = StepRunner.probs
    passes = []

    def probs(self, rows, hooks=None, row_layers=None, patches=None):
        passes.append(rows)
        if rows > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_probs(self, rows, hooks, row_layers, patches)

    monkeypatch.setattr(StepRunner, "probs", probs)
    squeezed = mkn.attribute(lm, PROMPT, TARGET, method="amig", steps=8, batch_size=16)
    assert max(passes) == 16 and 2 in passes  # 16 -> 8 -> 4 -> 2 rows per pass
    assert torch.allclose(squeezed.scores, free.scores, atol=1e-6, rtol=1e-4)
    assert squeezed.prob == free.prob
    assert "out of memory" in caplog.text.lower() or devices._warned


def test_rows_per_pass_follow_free_memory(monkeypatch):
    lm = knowing("llama")
    monkeypatch.setattr(devices, "free_bytes", lambda device: 10 * 2**30)
    assert default_batch_size(lm) == devices.MAX_ROWS
    monkeypatch.setattr(devices, "free_bytes", lambda device: 2**20)
    small = default_batch_size(lm)
    assert 1 <= small < devices.MAX_ROWS
    monkeypatch.undo()
    assert devices.free_bytes("cpu") > 2**20  # MemAvailable of this machine


def test_a_model_split_over_two_devices_gives_the_same_scores(tiny_dir):
    """accelerate's device map with one block offloaded to disk (the CPU-only way to put
    blocks on two devices): hooks and the fast path work across the boundary."""
    path = str(tiny_dir / "model")
    whole = mkn.load_model(path)
    split = mkn.load_model(path, device_map={
        "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
        "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"})
    a = mkn.attribute(whole, PROMPT, TARGET, method="amig", steps=4)
    b = mkn.attribute(split, PROMPT, TARGET, method="amig", steps=4)
    assert torch.allclose(a.scores, b.scores, atol=1e-6) and a.prob == b.prob


def test_another_dtype_reaches_every_tensor():
    """A float64 model: a tensor made in float32 somewhere on the way would fail or differ."""
    from mkn.interventions.controls import controlled_effect

    lm = knowing("llama")
    lm64 = wrap(lm.model.to(torch.float64), lm.tokenizer, name="tiny-float64")
    attribution = mkn.attribute(lm64, PROMPT, TARGET, method="amig", steps=4)
    assert attribution.prob > 0.5
    effect = controlled_effect(lm64, [(1, 5)], "suppress", own=[(PROMPT, TARGET)],
                               unrelated=[[("The capital of Germany is", "Berlin")]])
    assert effect.effect is not None


@pytest.mark.parametrize("args, message", [
    (["--device", "cuda"], "CUDA is not available on this machine"),
    (["--device", "cuda:7"], "available: cpu"),
    (["--device", "tpu"], "is not a device; use auto, cpu, cuda or cuda:N"),
    (["--device-map", '{"model.layers.0": "cuda:1"}'], "device map entry 'model.layers.0'"),
])
def test_devices_that_are_not_here_are_clear_errors(args, message):
    for command in (["attribute", "--prompt", "a [Y]", "--target", "b"],
                    ["locate", "--out", "/nonexistent/never-written"]):
        result = runner.invoke(app, [*command, *args])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (
            command, result.output)


def test_auto_device_and_default_dtype():
    assert devices.resolve_device("auto").type == ("cuda" if torch.cuda.is_available()
                                                   else "cpu")
    assert devices.default_dtype("cpu") == "float32"
    assert devices.default_dtype(torch.device("cuda", 0)) == "bfloat16"


def test_a_model_that_does_not_fit_is_refused_before_loading(tiny_dir, monkeypatch):
    from mkn.models.loading import ModelError

    monkeypatch.setattr(devices, "free_bytes", lambda device: 1024)
    with pytest.raises(ModelError, match=r"needs .* GiB .* but cpu has .* free \(available: "
                                         r"cpu\); use --device-map auto"):
        mkn.load_model(str(tiny_dir / "model"))
