"""Test-wide settings: generic-neuron lists built by the tests go to a temporary folder, not to
the user's cache."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

if "MKN_GENERIC_CACHE" not in os.environ:
    os.environ["MKN_GENERIC_CACHE"] = tempfile.mkdtemp(prefix="mkn-generic-")
    atexit.register(shutil.rmtree, os.environ["MKN_GENERIC_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny Llama that knows some facts, saved as a local Hugging Face directory, and the
    tiny capitals as JSONL."""
    from mkn.data import write_facts
    from tests.test_experiments import tiny_facts
    from tests.tiny_models import knowing

    root = tmp_path_factory.mktemp("tiny")
    lm = knowing("llama")
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    write_facts(tiny_facts(), root / "facts.jsonl")
    return root
