"""The name of the KV-cache argument and output field, on every transformers version mkn allows.

transformers renamed ``past_key_values`` to ``cache`` during 5.x and keeps the old name, with a
deprecation warning on every call, until 5.40. mkn passes and reads whichever name the
installed version's model outputs have, so it runs without that warning on new versions and
still works on the old ones.
"""

from __future__ import annotations

import dataclasses

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE = ("cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
         else "past_key_values")


def cache_kwarg(cache) -> dict:
    """``{name: cache}`` for a model call (``cache=`` or ``past_key_values=``)."""
    return {CACHE: cache}


def output_cache(output):
    """The KV cache a model call returned (``output.cache`` or ``output.past_key_values``)."""
    return output[CACHE]
