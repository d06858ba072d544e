"""mkn: multilingual knowledge neurons.

Find where a language model stores a fact, which of those neurons are shared across languages,
and use them to edit, check and inject knowledge.
"""

from mkn.attribution.api import METHODS, Attribution, attribute, predict, probability
from mkn.models.loading import DEFAULT_MODEL, LanguageModel, load_model, wrap

__all__ = ["DEFAULT_MODEL", "METHODS", "Attribution", "LanguageModel", "attribute", "load_model",
           "predict", "probability", "wrap"]
__version__ = "0.1.0"
