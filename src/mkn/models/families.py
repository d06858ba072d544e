"""One small adapter table per model family.

A *knowledge neuron* is one unit of the FFN intermediate activation: the input of the FFN
output projection, taken *after* the activation function (for gated MLPs ``act(gate) * up``).
Hooking the input of the output projection gives exactly that for every family below, which is
why each adapter only has to name the blocks and the output projection. (EleutherAI's
``knowledge-neurons`` hooks GPT-2 ``c_fc``, before GELU; EasyEdit hooks Llama ``gate_proj``.)

Hook names follow TransformerLens: ``blocks.{l}.mlp.hook_post`` is the activation fed to the
output projection of block ``l``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyAdapter:
    """Where a family keeps its FFN neurons.

    Attributes:
        family: human name of the family.
        model_types: ``config.model_type`` values handled by this adapter.
        causal: True for causal LMs, False for masked LMs.
        blocks: dotted path (from the top-level model) to the ``ModuleList`` of blocks.
        down_proj: dotted path (from one block) to the FFN output projection; its input is the
            post-activation FFN intermediate ("the neurons").
        conv1d: True when the output projection is a GPT-2 ``Conv1D`` (weight ``[in, out]``,
            i.e. transposed relative to ``nn.Linear``).
        mlm_head: for masked LMs, dotted path to the LM head that maps hidden states to logits.
        ffn_output: for post-LN masked LMs, dotted path (from one block) to the position-wise
            sublayer called as ``ffn_output(neurons, attention_output)`` that gives the block's
            output (BERT's ``output``: LayerNorm(dense(neurons) + attention_output)). With it a
            (layer l, step) row of IG starts at layer l+1: only its mask position differs from
            the clean output of layer l (:mod:`mkn.attribution.engine`).
    """

    family: str
    model_types: tuple[str, ...]
    causal: bool
    blocks: str
    down_proj: str
    conv1d: bool = False
    mlm_head: str | None = None
    ffn_output: str | None = None


ADAPTERS: tuple[FamilyAdapter, ...] = (
    FamilyAdapter("BERT/mBERT", ("bert",), False, "bert.encoder.layer", "output.dense",
                  mlm_head="cls", ffn_output="output"),
    FamilyAdapter("XLM-R/RoBERTa", ("xlm-roberta", "roberta"), False, "roberta.encoder.layer",
                  "output.dense", mlm_head="lm_head", ffn_output="output"),
    FamilyAdapter("GPT-2/mGPT", ("gpt2",), True, "transformer.h", "mlp.c_proj", conv1d=True),
    FamilyAdapter("GPT-Neo", ("gpt_neo",), True, "transformer.h", "mlp.c_proj"),
    FamilyAdapter("GPT-NeoX", ("gpt_neox",), True, "gpt_neox.layers", "mlp.dense_4h_to_h"),
    FamilyAdapter("BLOOM", ("bloom",), True, "transformer.h", "mlp.dense_4h_to_h"),
    FamilyAdapter("Llama/Mistral", ("llama", "mistral"), True, "model.layers", "mlp.down_proj"),
    FamilyAdapter("Qwen2/Qwen3", ("qwen2", "qwen3"), True, "model.layers", "mlp.down_proj"),
    FamilyAdapter("Gemma/Gemma2/Gemma3", ("gemma", "gemma2", "gemma3_text"), True,
                  "model.layers", "mlp.down_proj"),
    # Gemma3ForConditionalGeneration (model_type gemma3: image + text) keeps its decoder apart.
    FamilyAdapter("Gemma3 multimodal", ("gemma3",), True, "model.language_model.layers",
                  "mlp.down_proj"),
    FamilyAdapter("XGLM", ("xglm",), True, "model.layers", "fc2"),
)

_BY_MODEL_TYPE = {model_type: a for a in ADAPTERS for model_type in a.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def adapter_for(model_type: str) -> FamilyAdapter:
    """The adapter for a ``config.model_type``; an error naming the supported ones otherwise."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        families = ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in ADAPTERS)
        raise ValueError(
            f"unsupported architecture {model_type!r}; supported families: {families}"
        ) from None


def hook_name(layer: int) -> str:
    """TransformerLens-style name of the neuron activations of ``layer``."""
    return f"blocks.{layer}.mlp.hook_post"
