"""GGUF -> safetensors, one tensor at a time, in bounded memory.

transformers' GGUF loader (``from_pretrained(gguf_file=...)``) dequantizes every tensor into
memory before the model exists, so converting a 1.5B model peaks near 15 GB of RAM. Here the
safetensors header is written first, from the shapes of the model built on the meta device (no
memory), and then each GGUF tensor is dequantized, passed through transformers' own per-tensor
fix-ups (:data:`transformers.modeling_gguf_pytorch_utils.TENSOR_PROCESSORS`: Llama's q/k
un-permutation, Gemma's norm offset), cast to the target dtype and appended to the file. Peak
memory is the process's baseline, the memory-mapped GGUF and about two copies of the largest
tensor, whatever the model's size. The tensors are the ones transformers' loader would give
(``tests/test_convert.py`` compares them on tiny GGUF files of each supported architecture).

Safetensors layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header
length, a JSON header ``{name: {dtype, shape, data_offsets}}`` padded with spaces to a multiple
of 8, then the tensors' bytes in header order.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

# architectures whose per-tensor processing keeps GGUF names (streamable); others (MoE experts
# split or merged across tensors) fall back to transformers' in-memory loader
STREAMABLE = ("TensorProcessor", "LlamaTensorProcessor", "Gemma2TensorProcessor")
BLOCK_BYTES = 1 << 26  # float32 bytes dequantized at a time (64 MiB)
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


class NotStreamable(ValueError):
    """A GGUF whose tensors cannot be converted one at a time (the caller falls back)."""


def tensor_plan(gguf: Path, auto_class, config) -> tuple[list[tuple[object, str, tuple]], object]:
    """``[(GGUF tensor, HF name, HF shape)]`` in file order, and the per-tensor processor: the
    names from transformers' GGUF -> HF map of ``auto_class(config)`` built on the meta device,
    the shapes from that model."""
    from accelerate import init_empty_weights
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    reader = GGUFReader(gguf)
    architecture = read_field(reader, "general.architecture")[0]
    processor_class = TENSOR_PROCESSORS.get(architecture, TensorProcessor)
    if processor_class.__name__ not in STREAMABLE:
        raise NotStreamable(f"{architecture}: {processor_class.__name__} reshapes tensors "
                            "across names")
    # what the processors read (Llama: head counts), from the config already parsed, rather than
    # parsing the GGUF's metadata (the whole vocabulary) a second time
    processor = processor_class(config={
        key: getattr(config, key) for key in ("num_attention_heads", "num_key_value_heads")
        if getattr(config, key, None) is not None})
    with init_empty_weights():
        empty = auto_class.from_config(config)
    names = get_gguf_hf_weights_map(empty, processor)
    shapes = {name: tuple(t.shape) for name, t in empty.state_dict().items()}
    plan = []
    for tensor in reader.tensors:
        hf_name = names.get(tensor.name)
        if hf_name is None:  # e.g. rope frequencies: transformers computes them
            continue
        if hf_name not in shapes:
            raise NotStreamable(f"{tensor.name} maps to {hf_name}, which the model lacks")
        plan.append((tensor, hf_name, shapes[hf_name]))
    return plan, processor


def header(plan: list[tuple[object, str, tuple]], dtype: torch.dtype) -> bytes:
    """The safetensors header (length prefix and padded JSON) of ``plan`` in ``dtype``."""
    size = torch.finfo(dtype).bits // 8
    entries, offset = {}, 0
    for _, name, shape in plan:
        end = offset + int(np.prod(shape, dtype=np.int64)) * size
        entries[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                         "data_offsets": [offset, end]}
        offset = end
    text = json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text.encode()


def row_blocks(tensor) -> Iterator[np.ndarray]:
    """The raw (quantized) rows of a GGUF ``tensor`` in blocks of about :data:`BLOCK_BYTES`
    once dequantized, so that no whole large tensor (the embedding) is ever in memory in
    float32; attention q/k (which Llama's processor un-permutes across rows) and 1-D tensors
    come whole."""
    data = tensor.data
    if data.ndim != 2 or ".attn_q." in tensor.name or ".attn_k." in tensor.name:
        yield data
        return
    row_values = int(tensor.shape[0])  # GGUF lists dimensions innermost first
    step = max(1, BLOCK_BYTES // (4 * row_values))
    for start in range(0, data.shape[0], step):
        yield data[start:start + step]


def write_streamed(gguf: Path, out: Path, auto_class, config,
                   dtype: torch.dtype = torch.float32,
                   progress: Callable[[str], None] | None = None) -> int:
    """Write ``out`` (one safetensors file) from ``gguf``, tensor by tensor; returns the number
    of tensors. A dequantized tensor whose size differs from the model's is an error naming it.
    """
    from gguf import dequantize

    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"cannot write {dtype} (choose float32, bfloat16 or float16)")
    plan, processor = tensor_plan(gguf, auto_class, config)
    with open(out, "wb") as file:
        file.write(header(plan, dtype))
        for tensor, name, shape in plan:
            total = int(np.prod(shape, dtype=np.int64))
            written = 0
            for block in row_blocks(tensor):
                result = processor.process(weights=dequantize(block, tensor.tensor_type),
                                           name=tensor.name)
                if result.name != tensor.name:
                    raise NotStreamable(f"{tensor.name} was renamed to {result.name}")
                weights = np.ascontiguousarray(result.weights)
                if not weights.flags.writeable:  # an F32 tensor is a view of the mapped file
                    weights = weights.copy()
                values = torch.from_numpy(weights.reshape(-1)).to(dtype)
                file.write(values.view(torch.uint8).numpy())  # no copy
                written += values.numel()
                del result, weights, values
            if written != total:
                raise ValueError(f"{gguf.name}: tensor {tensor.name} has {written} values, "
                                 f"{name} needs {list(shape)}")
            if progress:
                progress(name)
    return len(plan)
