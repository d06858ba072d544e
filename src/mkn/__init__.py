"""mkn: multilingual knowledge neurons.

Find where a language model stores a fact, which of those neurons are shared across languages,
and use them to edit, check and inject knowledge.
"""

from mkn.attribution.api import (
    METHODS,
    Attribution,
    Attributions,
    attribute,
    predict,
    predict_many,
    probability,
)
from mkn.models.families import register_family
from mkn.models.loading import DEFAULT_MODEL, LanguageModel, load_model, wrap

__all__ = ["DEFAULT_MODEL", "METHODS", "Attribution", "Attributions", "LanguageModel",
           "attribute", "load_model", "predict", "predict_many", "probability",
           "register_family", "wrap"]
__version__ = "0.1.0"
