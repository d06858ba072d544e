"""Run configuration: a YAML file (validated with pydantic) as an alternative to flags.

Example ``run.yaml``::

    model: gemma-3-270m
    data: mlama:paraphrased-mlama-6
    languages: [en, fr, ja]
    limit: 20
    locate:
      method: matrice
      steps: 20
      thresholds: {en: 0.3, "*": 0.2}

Flags given on the command line override the file; the resolved configuration is saved with
the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mkn.localization.locate import LocateConfig


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "gemma-3-270m"
    data: str = "builtin"
    languages: list[str] | None = Field(None, description="None: all of the data's languages")
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    shuffle: bool = Field(False, description="sample facts at random (seeded) before the limit")
    relations: list[str] | None = Field(None, description="only these relations (e.g. P36)")
    per_relation: int | None = Field(None, ge=1, description="at most N facts per relation, "
                                     "interleaved by relation (a balanced sample)")
    lenient: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="auto/None: bfloat16 where the device computes it natively (a GPU, a "
        "CPU with AVX512-BF16/AMX), float32 elsewhere")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    device_map: dict[str, str | int] | str | None = Field(
        None, description="accelerate's placement over several devices, e.g. auto")
    backend: Literal["local", "ray"] = "local"
    workers: int = Field(1, ge=1)
    gpus_per_worker: float | None = Field(None, ge=0, description="GPUs per Ray actor (default: "
                                          "one each where the cluster has GPUs)")
    generic: str = Field("auto", description="generic neurons: auto (the cached reference list "
                         "of this model and data, built on first use), keep (leave them in, as "
                         "Dai et al. and AMIG do) or the path of a list from mkn generic --out")
    relation_neurons: str = Field(
        "auto", description="relation neurons (knowledge neurons of many facts of one relation): "
        "auto (left out: each set is the fact's own, from the cached reference list of this "
        "model, data and relations, built on first use), keep (left in, as Dai et al. and AMIG "
        "do) or the path of a relation-neuron list")
    locate: LocateConfig = Field(default_factory=LocateConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from mkn.models.devices import resolve_device

        resolve_device(value)  # a device that exists here, or say what does
        return value

    @field_validator("device_map")
    @classmethod
    def _device_map(cls, value):
        from mkn.models.devices import parse_device_map

        return None if value is None else parse_device_map(value)

    @field_validator("generic", "relation_neurons")
    @classmethod
    def _lists(cls, value: str, info) -> str:
        if value not in ("auto", "keep") and not Path(value).expanduser().is_file():
            kind = "generic" if info.field_name == "generic" else "relation"
            raise ValueError(f"expected auto, keep or the path of a {kind}-neuron list; "
                             f"{value!r} is no file")
        return value

    @field_validator("languages", "relations")
    @classmethod
    def _codes(cls, value: list[str] | None, info) -> list[str] | None:
        if value is not None:
            if not value or any(not code.strip() for code in value):
                raise ValueError(f"{info.field_name} must be a non-empty list of codes")
            if len(set(value)) != len(value):
                raise ValueError(f"duplicate {info.field_name} in {value}")
        return value


def _describe(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return f"invalid configuration in {source}: " + "; ".join(problems)


def yaml_problem(error: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (line and column)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"not valid YAML ({where}{' '.join(str(problem).split())})"


def read_settings(path: str | Path) -> tuple[dict[str, Any], str]:
    """The mapping of settings in the YAML file ``path`` and its name, or a one-line error
    saying what is wrong with the file."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}: "
                         f"{error.reason})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: {yaml_problem(error)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    return dict(loaded or {}), str(path)


def validated(model: type[BaseModel], data: dict[str, Any], source: str):
    """``model(**data)``, or a one-line error naming the bad setting and ``source``."""
    try:
        return model(**data)
    except ValidationError as error:
        raise ValueError(_describe(error, source)) from None


def load_run_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """The configuration from ``path`` (YAML) with ``overrides`` (non-None flags) applied.

    ``overrides`` keys are RunConfig fields, or LocateConfig fields (method, steps, ...).
    """
    data, source = read_settings(path) if path is not None else ({}, "flags")
    locate = dict(data.pop("locate", None) or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key in RunConfig.model_fields:
            data[key] = value
        elif key in LocateConfig.model_fields:
            locate[key] = value
        else:
            raise ValueError(f"unknown setting {key!r}")
    return validated(RunConfig, {**data, "locate": locate}, source)
