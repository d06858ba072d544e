"""The papers' experiments, one readable file each, all with one call shape:

``run(lm, facts, languages, config, seed=0, progress=None, **options) -> dict`` and
``table(result) -> str`` (markdown). ``seed`` is unused by the deterministic ones.
"""

from mkn.experiments import (
    audits,
    cross_lingual_editing,
    enhancement,
    fact_checking,
    injection,
    localization_quality,
    shared_sets,
    size_curves,
)

EXPERIMENTS = {
    "localization-quality": localization_quality,
    "cross-lingual-editing": cross_lingual_editing,
    "fact-checking": fact_checking,
    "enhancement": enhancement,
    "injection": injection,
    "size-curves": size_curves,
    "shared-sets": shared_sets,
    "audits": audits,
}
