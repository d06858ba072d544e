"""Issue 24: GGUF -> safetensors streamed tensor by tensor (the same tensors as transformers'
in-memory loader, on tiny GGUF files written here), and named models assembled from chunk
packages (size and SHA-256 checked, a missing part named, the packages never imported)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from mkn.models import convert  # noqa: E402
from mkn.models.loading import ModelError, convert_gguf, load_model  # noqa: E402
from mkn.models.named import ChunkedModel, PartMissing, assemble  # noqa: E402

Q8 = gguf.GGMLQuantizationType.Q8_0
F32 = gguf.GGMLQuantizationType.F32


def write_tiny_gguf(path: Path, arch: str, tied: bool, layers: int = 2, hidden: int = 32,
                    ffn: int = 64, heads: int = 4, kv_heads: int = 2, seed: int = 0) -> Path:
    """A tiny random ``arch`` (qwen2 or llama) GGUF with Q8_0 matrices, F32 norms and biases
    and a byte-level BPE vocabulary, as llama.cpp lays it out."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    tokens = [*bytes_to_unicode().values(), "Ġt", "he", "Ġthe", "<|endoftext|>"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    for add in (writer.add_bos_token_id, writer.add_eos_token_id, writer.add_pad_token_id):
        add(len(tokens) - 1)

    def tensor(name: str, shape: tuple[int, ...], kind=Q8) -> None:
        values = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if kind == F32:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)

    kv = kv_heads * hidden // heads
    tensor("token_embd.weight", (len(tokens), hidden))
    for layer in range(layers):
        block = f"blk.{layer}"
        tensor(f"{block}.attn_norm.weight", (hidden,), F32)
        for name, rows in (("attn_q", hidden), ("attn_k", kv), ("attn_v", kv)):
            tensor(f"{block}.{name}.weight", (rows, hidden))
            if arch == "qwen2":
                tensor(f"{block}.{name}.bias", (rows,), F32)
        tensor(f"{block}.attn_output.weight", (hidden, hidden))
        tensor(f"{block}.ffn_norm.weight", (hidden,), F32)
        tensor(f"{block}.ffn_gate.weight", (ffn, hidden))
        tensor(f"{block}.ffn_up.weight", (ffn, hidden))
        tensor(f"{block}.ffn_down.weight", (hidden, ffn))
    tensor("output_norm.weight", (hidden,), F32)
    if not tied:
        tensor("output.weight", (len(tokens), hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def in_memory(path: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                             dtype=torch.float32).eval()


@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("llama", False)])
def test_streamed_conversion_equals_transformers_loader(tmp_path, arch, tied):
    """Every tensor (Llama's q/k un-permuted, Q8_0 dequantized) as transformers gives it; the
    converted directory loads and predicts alike."""
    from safetensors import safe_open

    path = write_tiny_gguf(tmp_path / f"tiny-{arch}.gguf", arch, tied)
    out = convert_gguf(path, tmp_path / "converted")
    reference = in_memory(path)
    expected = reference.state_dict()
    with safe_open(out / "model.safetensors", "pt") as file:
        names = set(file.keys())
        for name in names:
            assert torch.equal(file.get_tensor(name), expected[name]), name
    assert names == set(expected) - ({"lm_head.weight"} if tied else set())
    lm = load_model(out, dtype="float32")
    ids = lm.tokenizer("the the", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(lm.model(ids).logits, reference(ids).logits, atol=1e-5)
    assert lm.weights == f"GGUF Q8_0 ({path.name}), dequantized"


def test_streamed_bfloat16_and_the_in_memory_fallback(tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", "qwen2", tied=True)
    expected = in_memory(path).state_dict()
    half = load_model(convert_gguf(path, tmp_path / "bf16", torch.bfloat16), dtype="bfloat16")
    weight = half.model.model.layers[0].mlp.down_proj.weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, expected["model.layers.0.mlp.down_proj.weight"].bfloat16())
    monkeypatch.setattr(convert, "BLOCK_BYTES", 4 * 32 * 3)  # 3 rows dequantized at a time
    blocks = load_model(convert_gguf(path, tmp_path / "blocks"), dtype="float32")
    for name, value in blocks.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    monkeypatch.setattr(convert, "STREAMABLE", ())  # as for an MoE architecture
    fallback = load_model(convert_gguf(path, tmp_path / "fallback"), dtype="float32")
    assert torch.equal(fallback.model.model.layers[1].mlp.up_proj.weight,
                       expected["model.layers.1.mlp.up_proj.weight"])


def test_header_is_valid_safetensors_with_aligned_offsets():
    plan = [(None, "a", (3,)), (None, "b", (2, 5))]
    raw = convert.header(plan, torch.bfloat16)
    length = int.from_bytes(raw[:8], "little")
    assert len(raw) == 8 + length and length % 8 == 0
    import json

    entries = json.loads(raw[8:])
    assert entries["a"] == {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}
    assert entries["b"]["data_offsets"] == [6, 26]


# -- named models from chunk packages ----------------------------------------------------------

def chunk_packages(root: Path, parts: list[bytes]) -> ChunkedModel:
    """Packages ``fakechunk_partN`` with ``data/partNN.bin`` whose ``__init__`` raises (so a
    test fails if mkn ever imports one), and the model they assemble."""
    for number, data in enumerate(parts, 1):
        package = root / f"fakechunk_part{number}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('imported a chunk package')\n")
        (package / "data" / f"part{number:02d}.bin").write_bytes(data)
    whole = b"".join(parts)
    return ChunkedModel(name="fake-model", description="a test", distribution="fakechunk-part%d",
                        package="fakechunk_part%d", data_file="data/part%02d.bin",
                        parts=len(parts), version="0.1.0", size=len(whole),
                        sha256=hashlib.sha256(whole).hexdigest(), filename="fake.gguf")


def test_assembly_checks_size_and_hash_and_names_a_missing_part(tmp_path, monkeypatch):
    root = tmp_path / "site"
    parts = [b"GGUF" + bytes(range(200)) * 3, b"x" * 1000, b"tail"]
    model = chunk_packages(root, parts)
    monkeypatch.syspath_prepend(str(root))
    out = assemble(model, tmp_path / "cache")
    assert out.read_bytes() == b"".join(parts)
    assert not [m for m in sys.modules if m.startswith("fakechunk")]  # located, not imported
    assert assemble(model, tmp_path / "cache") == out  # reused
    short = ChunkedModel(**{**model.__dict__, "parts": 4})
    with pytest.raises(PartMissing, match=r"^fake-model: part 4 of 4 \(fakechunk-part4==0.1.0\) "
                                          r"is not installed; pip install 'mkn-neurons\[qwen\]'$"):
        assemble(short, tmp_path / "other")
    assert not (tmp_path / "other").exists()  # nothing written before every part is found
    wrong = ChunkedModel(**{**model.__dict__, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="the assembled parts have SHA-256"):
        assemble(wrong, tmp_path / "wrong")
    assert list((tmp_path / "wrong").iterdir()) == []  # no half-written or wrong file left
    (root / "fakechunk_part2" / "data" / "part02.bin").write_bytes(b"x" * 999)  # truncated
    with pytest.raises(ValueError, match="the 3 parts hold 1,607 bytes, the model has 1,608"):
        assemble(model, tmp_path / "short")


def test_named_models_resolve_and_a_missing_part_is_one_line(tmp_path, monkeypatch):
    from mkn.models import loading
    from mkn.models.named import NAMED_MODELS

    assert {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} <= set(NAMED_MODELS)
    monkeypatch.setenv("MKN_CACHE", str(tmp_path / "cache"))
    model = chunk_packages(tmp_path / "site", [b"not", b"a model"])
    monkeypatch.setitem(loading.NAMED_MODELS, "fake-model", ChunkedModel(
        **{**model.__dict__, "parts": 3}))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ModelError, match=r"^fake-model: part 3 of 3 .* is not installed"):
        load_model("fake-model")
    with pytest.raises(ModelError, match="qwen2.5-coder-1.5b"):  # listed among known names
        load_model("no-such-model")
