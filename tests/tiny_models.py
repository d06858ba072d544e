"""Tiny random models of every supported family, with tokenizers built locally.

Every factory builds a 2-layer transformers model (hidden 32, intermediate 64) from a config
written here, with random weights drawn under a fixed seed, in float32 and eval mode, and wraps
it with :func:`mkn.wrap`. Tokenizers are word-level ``tokenizers`` tokenizers over a small
in-code vocabulary (English words, and Chinese characters split one per token), wrapped in
``PreTrainedTokenizerFast``: causal ones prepend ``<s>``; masked ones wrap the text in
``[CLS] ... [SEP]``. Nothing is downloaded.

Families are keyed by ``config.model_type``: ``FAMILIES`` covers every adapter of
:mod:`mkn.models.families`, including Gemma 3 image + text (``gemma3``, with a one-layer vision
tower). Local/sliding attention windows (GPT-Neo, Mistral, Qwen2, Gemma 2/3) are 4 tokens, shorter
than the test prompts, so the windowed masks matter.

Factories are cached: each model is built once per test session (tests must not modify the
models they get; build a fresh one with ``build(family, cached=False)`` for that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

import mkn
from mkn.models.loading import LanguageModel

VOCAB_SIZE = 256  # model vocab; the tokenizer uses the first len(tokenizer) ids
HIDDEN = 32
INTERMEDIATE = 64
LAYERS = 2
HEADS = 4
CONTEXT = 64
WINDOW = 4  # sliding/local attention window, shorter than the test prompts on purpose
SEED = 0

CAUSAL_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
MASKED_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_WORDS_TEXT = """
. , ? ! ' - : ;
The the A a An an of is was are in on at to from by for with and or not as it its this that
capital city country language official largest river mountain born died wrote invented founded
France Paris Germany Berlin Italy Rome Spain Madrid Japan Tokyo China Beijing Russia Moscow
Canada Ottawa Brazil England London United States Kingdom New York Delhi India Zealand
Sydney Australia Egypt Cairo Greece Athens French German Italian Spanish Japanese English
Chinese Russian speaks spoken people lives works president king queen author company
Einstein Newton Shakespeare Mozart Apple Google Microsoft Toyota Nile Amazon Alps Everest
one two three four five first second last new old big small good
"""
_WORDS = _WORDS_TEXT.split()

# Chinese (no spaces between words): every character is its own token.
_CJK = "法国的首都是巴黎德柏林日本东京中意大利罗马英伦敦美纽约语言官方。"

WORDS: tuple[str, ...] = tuple(dict.fromkeys([*_WORDS, *_CJK]))


def _tokenizer(specials: tuple[str, ...], causal: bool,
               add_bos: bool = True) -> transformers.PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate((*specials, *WORDS))}
    assert len(vocab) <= VOCAB_SIZE, len(vocab)
    unk = "<unk>" if causal else "[UNK]"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    # BERT's normalizer drops control characters and puts spaces around CJK characters; the
    # BERT pre-tokenizer then splits on whitespace and punctuation.
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=False, lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if causal and add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    if causal:
        names = dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                     mask_token="[MASK]")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **names)
    return fast


@cache
def causal_tokenizer(add_bos: bool = True) -> transformers.PreTrainedTokenizerFast:
    """Prepends ``<s>`` (Llama-style) unless ``add_bos`` is False (GPT-2-style)."""
    return _tokenizer(CAUSAL_SPECIALS, causal=True, add_bos=add_bos)


@cache
def masked_tokenizer() -> transformers.PreTrainedTokenizerFast:
    return _tokenizer(MASKED_SPECIALS, causal=False)


def _causal_ids() -> dict:
    tok = causal_tokenizer()
    return dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)


def _masked_ids() -> dict:
    return dict(pad_token_id=masked_tokenizer().pad_token_id)


# -- configs ----------------------------------------------------------------------------------
# Weights are drawn wider than the usual 0.02 so the tiny models are far from uniform (the
# probabilities and gradients then vary enough along the IG path to test something).
INIT = 0.2


def _bert(**kw) -> transformers.PretrainedConfig:
    return transformers.BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=CONTEXT,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=INIT,
        **_masked_ids(), **kw)


def _roberta(cls=transformers.RobertaConfig, **kw) -> transformers.PretrainedConfig:
    # RoBERTa positions start at pad_token_id + 1, hence the larger table.
    pad = masked_tokenizer().pad_token_id
    return cls(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        max_position_embeddings=CONTEXT + pad + 1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, initializer_range=INIT, pad_token_id=pad,
        bos_token_id=masked_tokenizer().cls_token_id, eos_token_id=masked_tokenizer().sep_token_id,
        **kw)


def _gpt2(**kw) -> transformers.PretrainedConfig:
    config = dict(vocab_size=VOCAB_SIZE, n_embd=HIDDEN, n_inner=INTERMEDIATE, n_layer=LAYERS,
                  n_head=HEADS, n_positions=CONTEXT, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0, initializer_range=INIT, **_causal_ids())
    config.update(kw)
    return transformers.GPT2Config(**config)


def _gpt_neo() -> transformers.PretrainedConfig:
    return transformers.GPTNeoConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_layers=LAYERS, num_heads=HEADS, attention_types=[[["global", "local"], LAYERS // 2]],
        window_size=WINDOW, max_position_embeddings=CONTEXT, resid_dropout=0.0, embed_dropout=0.0,
        attention_dropout=0.0, initializer_range=INIT, **_causal_ids())


def _gpt_neox() -> transformers.PretrainedConfig:
    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=CONTEXT,
        rotary_pct=0.5, use_parallel_residual=True, hidden_dropout=0.0, attention_dropout=0.0,
        initializer_range=INIT, tie_word_embeddings=False, **_causal_ids())


def _bloom() -> transformers.PretrainedConfig:
    # BLOOM has no intermediate_size: its MLP is always 4 * hidden, so hidden 16 gives 64.
    return transformers.BloomConfig(
        vocab_size=VOCAB_SIZE, hidden_size=INTERMEDIATE // 4, n_layer=LAYERS, n_head=HEADS,
        hidden_dropout=0.0, attention_dropout=0.0, initializer_range=INIT, **_causal_ids())


def _xglm() -> transformers.PretrainedConfig:
    return transformers.XGLMConfig(
        vocab_size=VOCAB_SIZE, d_model=HIDDEN, ffn_dim=INTERMEDIATE, num_layers=LAYERS,
        attention_heads=HEADS, max_position_embeddings=CONTEXT, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0, init_std=INIT,
        decoder_start_token_id=causal_tokenizer().eos_token_id, **_causal_ids())


def _llama_like(cls, **kw) -> transformers.PretrainedConfig:
    config = dict(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                  max_position_embeddings=CONTEXT, initializer_range=INIT,
                  tie_word_embeddings=False, **_causal_ids())
    config.update(kw)
    return cls(**config)


def _gemma3_multimodal() -> transformers.PretrainedConfig:
    vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2,
                                             image_size=16, patch_size=4)
    text = _llama_like(transformers.Gemma3TextConfig, head_dim=8, sliding_window=WINDOW,
                       query_pre_attn_scalar=8, layer_types=["sliding_attention", "full_attention"])
    # image tokens: ids the word-level tokenizer never produces
    return transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4,
        image_token_index=VOCAB_SIZE - 1, boi_token_index=VOCAB_SIZE - 2,
        eoi_token_index=VOCAB_SIZE - 3)


_CONFIGS: dict[str, tuple[Callable[[], transformers.PretrainedConfig], type]] = {
    "bert": (_bert, transformers.BertForMaskedLM),
    "roberta": (_roberta, transformers.RobertaForMaskedLM),
    "xlm-roberta": (lambda: _roberta(transformers.XLMRobertaConfig),
                    transformers.XLMRobertaForMaskedLM),
    "gpt2": (_gpt2, transformers.GPT2LMHeadModel),
    "gpt_neo": (_gpt_neo, transformers.GPTNeoForCausalLM),
    "gpt_neox": (_gpt_neox, transformers.GPTNeoXForCausalLM),
    "bloom": (_bloom, transformers.BloomForCausalLM),
    "llama": (lambda: _llama_like(transformers.LlamaConfig), transformers.LlamaForCausalLM),
    "mistral": (lambda: _llama_like(transformers.MistralConfig, sliding_window=WINDOW),
                transformers.MistralForCausalLM),
    "qwen2": (lambda: _llama_like(transformers.Qwen2Config, use_sliding_window=True,
                                  sliding_window=WINDOW, max_window_layers=1),
              transformers.Qwen2ForCausalLM),
    "qwen3": (lambda: _llama_like(transformers.Qwen3Config, head_dim=16),
              transformers.Qwen3ForCausalLM),
    "gemma": (lambda: _llama_like(transformers.GemmaConfig, head_dim=8,
                                  hidden_activation="gelu_pytorch_tanh"),
              transformers.GemmaForCausalLM),
    "gemma2": (lambda: _llama_like(transformers.Gemma2Config, head_dim=8, sliding_window=WINDOW,
                                   query_pre_attn_scalar=8, final_logit_softcapping=30.0,
                                   attn_logit_softcapping=50.0),
               transformers.Gemma2ForCausalLM),
    "gemma3_text": (lambda: _llama_like(transformers.Gemma3TextConfig, head_dim=8,
                                        sliding_window=WINDOW, query_pre_attn_scalar=8,
                                        layer_types=["sliding_attention", "full_attention"]),
                    transformers.Gemma3ForCausalLM),
    "xglm": (_xglm, transformers.XGLMForCausalLM),
    # Gemma 3 image + text (model_type gemma3): the text decoder sits under model.language_model.
    "gemma3": (lambda: _gemma3_multimodal(), transformers.Gemma3ForConditionalGeneration),
}

FAMILIES: tuple[str, ...] = tuple(_CONFIGS)
MASKED_FAMILIES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta")
CAUSAL_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f not in MASKED_FAMILIES)


def config(family: str) -> transformers.PretrainedConfig:
    """The tiny config of ``family`` (a fresh object)."""
    return _CONFIGS[family][0]()


def build_model(model_class: type, config: transformers.PretrainedConfig,
                seed: int = SEED) -> torch.nn.Module:
    """A random float32 model in eval mode, the same for the same seed."""
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    return model


def tokenizer_for(family_or_config) -> transformers.PreTrainedTokenizerFast:
    family = getattr(family_or_config, "model_type", family_or_config)
    return masked_tokenizer() if family in MASKED_FAMILIES else causal_tokenizer()


def build(family: str, cached: bool = True, add_bos: bool = True, **overrides) -> LanguageModel:
    """The tiny model of ``family`` wrapped for mkn; ``overrides`` change its config.

    ``add_bos=False`` gives a causal model a tokenizer that adds no special tokens.
    """
    if cached and add_bos and not overrides:
        return tiny(family)
    make_config, model_class = _CONFIGS[family]
    cfg = make_config()
    for key, value in overrides.items():
        setattr(cfg, key, value)
    model = build_model(model_class, cfg)
    tokenizer = tokenizer_for(family) if add_bos else causal_tokenizer(add_bos=False)
    return mkn.wrap(model, tokenizer, name=f"tiny-{family}")


@cache
def tiny(family: str) -> LanguageModel:
    """The cached tiny model of ``family`` (do not modify it)."""
    return build(family, cached=False)


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run with ``n`` torch threads: tiny models are fastest on one, above all on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- facts, and a tiny model that knows some of them ------------------------------------------
# (en subject, en object, zh subject, zh object): capitals (P36) and official languages (P37).
CAPITALS = [("France", "Paris", "法国", "巴黎"), ("Germany", "Berlin", "德国", "柏林"),
            ("Japan", "Tokyo", "日本", "东京"), ("Italy", "Rome", "意大利", "罗马"),
            ("England", "London", "英国", "伦敦")]
LANGUAGES_SPOKEN = [("France", "French", "法国", "法语"),
                    ("Germany", "German", "德国", "德语"),
                    ("Japan", "Japanese", "日本", "日语"),
                    ("Italy", "Italian", "意大利", "意大利语"),
                    ("England", "English", "英国", "英语")]


def capital_facts():
    """Five capitals (P36) in en (two queries) and zh (one)."""
    from mkn.data.schema import Fact

    return [Fact(id=f"capital-{en_s.lower()}", relation="P36", languages={
        "en": {"subject": en_s, "object": en_o,
               "queries": ["The capital of [X] is [Y] .", "The capital city of [X] is [Y] ."]},
        "zh": {"subject": zh_s, "object": zh_o, "queries": ["[X]的首都是[Y]。"]},
    }) for en_s, en_o, zh_s, zh_o in CAPITALS]


def language_facts():
    """Five official languages (P37) in en (two queries) and zh (one)."""
    from mkn.data.schema import Fact

    return [Fact(id=f"language-{en_s.lower()}", relation="P37", languages={
        "en": {"subject": en_s, "object": en_o,
               "queries": ["The official language of [X] is [Y] .",
                           "The language of [X] is [Y] ."]},
        "zh": {"subject": zh_s, "object": zh_o, "queries": ["[X]的官方语言是[Y]。"]},
    }) for en_s, en_o, zh_s, zh_o in LANGUAGES_SPOKEN]


def two_relation_facts():
    """Capitals and official languages interleaved (a sample of two relations)."""
    return [f for pair in zip(capital_facts(), language_facts(), strict=True) for f in pair]


def _train(lm: LanguageModel, facts, steps: int = 120, lr: float = 1e-2) -> LanguageModel:
    """Teach ``lm`` every query of ``facts`` (next-token loss on the filled-in sentences)."""
    texts = [prompt.replace("[Y]", fact.languages[lang].object)
             for fact in facts for lang in fact.languages for prompt in fact.prompts(lang)]
    batch = [torch.tensor(lm.tokenizer(text)["input_ids"])[None] for text in texts]
    model = lm.model
    model.requires_grad_(True).train()
    torch.manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    with torch_threads(1):
        for _ in range(steps):
            optimizer.zero_grad()
            loss = sum(model(input_ids=ids, labels=ids).loss for ids in batch) / len(batch)
            loss.backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    return lm


@cache
def knowing(family: str = "llama") -> LanguageModel:
    """The tiny model of ``family`` trained on four capitals in en and zh and four official
    languages in en only: it knows the capitals in both languages, the languages in English
    only, and nothing of England. Cached: do not modify it."""
    capitals = [f for f in capital_facts() if "england" not in f.id]
    spoken = [f.restrict(["en"]) for f in language_facts() if "england" not in f.id]
    return _train(build(family, cached=False), capitals + spoken)
