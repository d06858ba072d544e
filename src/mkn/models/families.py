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

Neuron = tuple[int, int]
"""One FFN neuron: ``(layer, index)`` (the one definition; every module imports it)."""


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


def register_family(family: str, model_types: str | tuple[str, ...], blocks: str,
                    down_proj: str, causal: bool = True, *, conv1d: bool = False,
                    mlm_head: str | None = None, ffn_output: str | None = None,
                    replace: bool = False) -> FamilyAdapter:
    """Teach mkn an architecture that is not in the table: name where its blocks and each
    block's FFN output projection are (:class:`FamilyAdapter`), e.g. OPT::

        register_family("OPT", "opt", blocks="model.decoder.layers", down_proj="fc2")

    The neurons are the input of ``down_proj``, which must be an ``nn.Linear`` (or a GPT-2
    ``Conv1D`` with ``conv1d=True``). A ``model_type`` already registered is refused unless
    ``replace`` is True.
    """
    types = (model_types,) if isinstance(model_types, str) else tuple(model_types)
    if not types or not all(isinstance(t, str) and t for t in types):
        raise ValueError(f"register_family: model_types must name at least one "
                         f"config.model_type, got {model_types!r}")
    taken = [t for t in types if t in _BY_MODEL_TYPE]
    if taken and not replace:
        raise ValueError(f"register_family: {', '.join(taken)} already handled by "
                         f"{_BY_MODEL_TYPE[taken[0]].family} (replace=True to override)")
    if not causal and mlm_head is None:
        raise ValueError("register_family: a masked LM (causal=False) needs mlm_head, the path "
                         "of its LM head")
    adapter = FamilyAdapter(family, types, causal, blocks, down_proj, conv1d=conv1d,
                            mlm_head=mlm_head, ffn_output=ffn_output)
    _BY_MODEL_TYPE.update(dict.fromkeys(types, adapter))
    return adapter



def adapter_for(model_type: str) -> FamilyAdapter:
    """The adapter for a ``config.model_type``; an error naming the supported ones otherwise."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        families = ", ".join(f"{a.family} ({'/'.join(a.model_types)})"
                             for a in dict.fromkeys(_BY_MODEL_TYPE.values()))
        raise ValueError(
            f"unsupported architecture {model_type!r}; supported families: {families} "
            "(mkn.register_family adds one)"
        ) from None


def hook_name(layer: int) -> str:
    """TransformerLens-style name of the neuron activations of ``layer``."""
    return f"blocks.{layer}.mlp.hook_post"


def hook_layer(hook: int | str) -> int:
    """The layer of a hook given as a layer number or a TransformerLens name
    (``blocks.{l}.mlp.hook_post``); anything else is a one-line error."""
    if isinstance(hook, int) and not isinstance(hook, bool):
        return hook
    if isinstance(hook, str):
        parts = hook.split(".")
        if len(parts) == 4 and parts[0] == "blocks" and parts[1].isdigit() and parts[2:] == [
                "mlp", "hook_post"]:
            return int(parts[1])
    raise ValueError(f"hook {hook!r}: expected a layer number or blocks.{{l}}.mlp.hook_post "
                     "(the FFN neurons are the only hook point)")
