"""Devices and memory: where a model runs, and how many rows fit in one pass.

``--device auto`` (the default) is the first CUDA GPU when there is one, else the CPU.
``--dtype auto`` (the default) is the fast dtype for that device (:func:`resolve_dtype`):
bfloat16 on a GPU that supports it and on a CPU with native bf16 arithmetic (AVX512-BF16 or
AMX on x86, the BF16 extension on Arm), float32 elsewhere: a CPU without bf16 units emulates it
about 17x slower than float32 (AMD EPYC, AVX2 only). ``--device-map auto`` (accelerate's) splits
a model too big for one GPU over several GPUs and the CPU.

Rows per pass (:func:`rows_per_pass`) are chosen from the free memory of the model's device
(CUDA: ``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` of ``/proc/meminfo``) and the model's
sizes, not from a fixed budget; :func:`halving_on_oom` halves a batch that still does not fit
and says so once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

MEMORY_FRACTION = 0.5  # of the free memory, for the rows of one pass (the rest: headroom)
MAX_ROWS = 1024


def available() -> str:
    """The devices this machine offers, for error messages."""
    names = ["cpu"]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            total = torch.cuda.get_device_properties(index).total_memory / 2**30
            names.append(f"cuda:{index} ({torch.cuda.get_device_name(index)}, {total:.0f} GiB)")
    return ", ".join(names)


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device that exists here, or a one-line
    error saying what is available."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N "
                         f"(available here: {available()})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}); available: {available()}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s); available: {available()}")
        return torch.device("cuda", device.index or 0)
    if device.type != "cpu":
        raise ValueError(f"--device {spec}: only cpu and cuda are supported; available: "
                         f"{available()}")
    return device


DTYPES = ("auto", "float32", "bfloat16", "float16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (cpuinfo flags), Arm (Features)
FORCE_ENV = "MKN_CPU_BF16"  # "native" or "emulated": overrides the CPU check (tests, benchmarks)


def _cpuinfo(keys: tuple[str, ...]) -> str | None:
    """The value of the first /proc/cpuinfo line whose key is one of ``keys`` (None where there
    is no such line or file)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``flags`` on x86, ``Features`` on Arm) from /proc/cpuinfo;
    empty where that file does not exist."""
    return set((_cpuinfo(("flags", "Features")) or "").split())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    import platform

    return (_cpuinfo(("model name", "Model", "Hardware")) or platform.processor()
            or platform.machine() or "unknown CPU")


def cpu_summary() -> str:
    """One line for benchmark output: the CPU, its cores and threads, its SIMD level and
    whether it computes bf16 natively (the flags that say so)."""
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve",
                        "bf16") if f in flags]
    native = cpu_bf16_flags()
    bf16 = f"native bf16: yes ({', '.join(native)})" if native else "native bf16: no (emulated)"
    forced = os.environ.get(FORCE_ENV)
    return (f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, flags {' '.join(simd) or 'none listed'}; {bf16}"
            + (f"; {FORCE_ENV}={forced}" if forced else ""))


def cpu_bf16_flags() -> list[str]:
    """The flags that give this CPU native bf16 arithmetic (empty: bf16 is emulated)."""
    flags = cpu_flags()
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def _cpu_bf16() -> tuple[bool, str]:
    """(whether this CPU computes bfloat16 natively, why): ``MKN_CPU_BF16=native|emulated``
    first, else the flags."""
    forced = os.environ.get(FORCE_ENV, "").strip().lower()
    if forced in ("native", "emulated"):
        return forced == "native", f"{FORCE_ENV}={forced}"
    if forced:
        raise ValueError(f"{FORCE_ENV}={forced!r}: use native or emulated")
    flags = cpu_bf16_flags()
    return bool(flags), (", ".join(flags) if flags else
                         "no avx512_bf16/amx_bf16 flag: bfloat16 would be emulated, ~17x slower")


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16/AMX (x86) or BF16 (Arm). ``MKN_CPU_BF16=native|emulated`` overrides the
    CPU's answer."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and bool(torch.cuda.is_bf16_supported())
    return _cpu_bf16()[0]


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device | str = "cpu"
                  ) -> tuple[torch.dtype, str]:
    """``auto`` (or None) | ``float32`` | ``bfloat16`` | ``float16`` -> (dtype, why).

    ``auto`` is bfloat16 where ``device`` computes it natively (:func:`native_bf16`), float32
    otherwise. float16 on the CPU is allowed with a warning: small activations underflow and the
    top neurons change."""
    device = torch.device(device)
    if isinstance(spec, torch.dtype):
        spec = str(spec).removeprefix("torch.")
    spec = (spec or "auto").strip().lower()
    if spec not in DTYPES:
        raise ValueError(f"unknown dtype {spec!r}; choose {', '.join(DTYPES)}")
    if spec != "auto":
        if spec == "float16" and device.type == "cpu":
            log.warning("float16 on the CPU: small activations underflow and the top neurons "
                        "can change; prefer float32 (or bfloat16 where the CPU has it)")
        return getattr(torch, spec), f"{spec} (asked for)"
    if device.type == "cuda":
        if native_bf16(device):
            return torch.bfloat16, f"auto: bfloat16 ({torch.cuda.get_device_name(device)})"
        return torch.float32, "auto: float32 (this GPU has no bfloat16)"
    native, where = _cpu_bf16()
    if native:
        return torch.bfloat16, f"auto: bfloat16 (the CPU computes it natively: {where})"
    return torch.float32, f"auto: float32 ({where})"


def default_dtype(device: torch.device | str) -> str:
    """The name of the dtype ``--dtype auto`` gives on ``device`` (:func:`resolve_dtype`)."""
    return str(resolve_dtype("auto", device)[0]).removeprefix("torch.")


# Float sums can depend on the thread count and on the CPU's kernels (their summation order).
# On the same machine, torch and thread count a computation gives the same bytes; across thread
# counts or CPUs, scores agree within this share of the largest |score| (per dtype; measured on
# gemma-3-270m, 1 vs 2 threads: README, "Same results").
THREAD_TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-1, "float16": 1e-1}


def within_thread_tolerance(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` (scores of one computation on other threads or CPUs) agree:
    ``max|a - b| <= tol * max|a|`` with ``tol = THREAD_TOLERANCE[dtype]``."""
    tol = THREAD_TOLERANCE[str(a.dtype).removeprefix("torch.")]
    a, b = a.float(), b.float()
    return bool((a - b).abs().max() <= tol * a.abs().max().clamp_min(1e-30))


def parse_device_map(device_map):
    """A ``device_map`` (``auto``, ``balanced``, ..., ``{module: device}`` or that mapping as a
    JSON string, as a flag gives it) checked to name only devices that exist here."""
    if isinstance(device_map, str) and device_map.strip().startswith("{"):
        try:
            device_map = json.loads(device_map)
        except json.JSONDecodeError as error:
            raise ValueError(f"--device-map: not a JSON mapping module -> device "
                             f"({error.msg})") from None
    check_device_map(device_map)
    return device_map


def check_device_map(device_map) -> None:
    """A ``device_map`` (``auto``, ``balanced``, ... or ``{module: device}``) names only devices
    that exist here."""
    if isinstance(device_map, str):
        if device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
            raise ValueError(f"--device-map {device_map!r}: use auto, balanced, "
                             "balanced_low_0, sequential or a mapping module -> device")
        return
    for module, where in dict(device_map).items():
        if where in ("disk", "meta"):
            continue
        target = f"cuda:{where}" if isinstance(where, int) else str(where)
        try:
            resolve_device(target)
        except ValueError as error:
            raise ValueError(f"device map entry {module!r} -> {where!r}: {error}") from None


def free_bytes(device: torch.device | str) -> int:
    """Free memory of ``device``: CUDA's free memory, or the CPU's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 8 * 2**30


def bytes_per_row(vocab: int, hidden: int, neurons: int, layers: int, sequence: int,
                  element: int) -> int:
    """Memory one (layer, step) row of an attribution pass needs, roughly: the float32 logits and
    their in-place gradient at the prediction position, plus the activations kept for the
    backward pass at each layer (hidden states and FFN neurons of every position of the row)."""
    logits = 2 * 4 * vocab
    activations = layers * sequence * (4 * hidden + 3 * neurons) * element
    return logits + activations


def rows_per_pass(device: torch.device | str, vocab: int, hidden: int, neurons: int,
                  layers: int, sequence: int = 1, element: int = 4,
                  fraction: float = MEMORY_FRACTION) -> int:
    """How many rows fit in ``fraction`` of the free memory of ``device`` (at least 1, at most
    :data:`MAX_ROWS`)."""
    row = bytes_per_row(vocab, hidden, neurons, layers, sequence, element)
    return int(max(1, min(MAX_ROWS, free_bytes(device) * fraction // row)))


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error or the CPU allocator failing."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


_warned: set[str] = set()


def halving_on_oom(run: Callable[[int], T], batch_size: int, what: str = "pass") -> T:
    """``run(batch_size)``; on an out-of-memory error, free the cache and retry with half the
    batch (down to 1), saying so once per ``what``."""
    while True:
        try:
            return run(batch_size)
        except Exception as error:
            if not is_out_of_memory(error) or batch_size <= 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size //= 2
            if what not in _warned:
                _warned.add(what)
                log.warning("out of memory in one %s: retrying with %d rows per pass (set "
                            "--batch-size to choose)", what, batch_size)
