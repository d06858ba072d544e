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


def test_auto_device():
    assert devices.resolve_device("auto").type == ("cuda" if torch.cuda.is_available()
                                                   else "cpu")


def test_auto_dtype_is_float32_where_the_cpu_emulates_bf16(monkeypatch):
    """An AMD EPYC with AVX2 only emulates bf16 ~17x slower: auto must give float32 there."""
    monkeypatch.delenv(devices.FORCE_ENV, raising=False)
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx", "avx2", "fma", "avx512f"})
    dtype, why = devices.resolve_dtype("auto", "cpu")
    assert dtype == torch.float32 and "emulated" in why, why
    assert devices.default_dtype("cpu") == "float32" and devices.resolve_dtype(None)[0] == dtype
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "avx512_bf16", "amx_bf16"})
    dtype, why = devices.resolve_dtype("auto", "cpu")
    assert dtype == torch.bfloat16 and "avx512_bf16, amx_bf16" in why, why
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"fp", "asimd", "bf16"})  # Arm
    assert devices.default_dtype("cpu") == "bfloat16"


def test_the_bf16_capability_can_be_forced_and_explicit_dtypes_win(monkeypatch, caplog):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setenv(devices.FORCE_ENV, "emulated")
    dtype, why = devices.resolve_dtype("auto")
    assert dtype == torch.float32 and "MKN_CPU_BF16=emulated" in why
    monkeypatch.setenv(devices.FORCE_ENV, "native")
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2"})
    assert devices.resolve_dtype("auto")[0] == torch.bfloat16
    monkeypatch.setenv(devices.FORCE_ENV, "sometimes")
    with pytest.raises(ValueError, match="MKN_CPU_BF16='sometimes': use native or emulated"):
        devices.resolve_dtype("auto")
    monkeypatch.delenv(devices.FORCE_ENV)
    assert devices.resolve_dtype("bfloat16") == (torch.bfloat16, "bfloat16 (asked for)")
    assert devices.resolve_dtype(torch.float32)[0] == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; choose auto, float32"):
        devices.resolve_dtype("fp8")
    with caplog.at_level("WARNING"):
        assert devices.resolve_dtype("float16", "cpu")[0] == torch.float16
    assert "float16 on the CPU" in caplog.text


def test_load_model_and_the_cli_say_which_dtype_auto_chose(tiny_dir, monkeypatch):
    monkeypatch.setenv(devices.FORCE_ENV, "emulated")
    lm = mkn.load_model(str(tiny_dir / "model"))
    assert lm.dtype == torch.float32 and lm.dtype_choice.startswith("auto: float32")
    monkeypatch.setenv(devices.FORCE_ENV, "native")
    lm = mkn.load_model(str(tiny_dir / "model"), dtype="auto")
    assert lm.dtype == torch.bfloat16 and lm.dtype_choice.startswith("auto: bfloat16")
    monkeypatch.setenv(devices.FORCE_ENV, "emulated")
    result = runner.invoke(app, ["attribute", "--model", str(tiny_dir / "model"), "--prompt",
                                 PROMPT, "--target", TARGET, "--steps", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert "dtype auto: float32 (MKN_CPU_BF16=emulated)" in result.output


def test_a_model_that_does_not_fit_is_refused_before_loading(tiny_dir, monkeypatch):
    from mkn.models.loading import ModelError

    monkeypatch.setattr(devices, "free_bytes", lambda device: 1024)
    with pytest.raises(ModelError, match=r"needs .* GiB .* but cpu has .* free \(available: "
                                         r"cpu\); use --device-map auto"):
        mkn.load_model(str(tiny_dir / "model"))


def test_a_converted_gguf_says_its_quantization(tmp_path, monkeypatch):
    """Issue 20: a study states the quantization of its weights; a converted GGUF directory
    carries a note read into ``lm.weights``."""
    from mkn.models import loading

    assert loading.gguf_file_type(tmp_path / "missing.gguf") == "unknown"
    monkeypatch.setattr(loading, "gguf_file_type", lambda gguf: "Q4_K_M")
    loading.write_source_note(tmp_path / "model.gguf", tmp_path)
    assert loading.weights_note(tmp_path) == "GGUF Q4_K_M (model.gguf), dequantized"
    assert loading.weights_note(tmp_path / "elsewhere") == "safetensors"
