"""The papers' experiments, one readable file each, all with one call shape:

``run(lm, facts, languages, config, seed=0, progress=None, cache=None, known=None,
generic=None, **options) -> dict``, ``table(result) -> str`` (markdown) and ``PHASES`` (progress
ticks per fact). ``seed`` is unused by the deterministic ones. :data:`EXPERIMENTS` is the one
registration: the CLI's choices and help, the option checks and the study read it;
:func:`register_experiment` adds one (a new experiment is one file).
"""

from types import ModuleType

from mkn.experiments import (
    audits,
    cross_lingual_editing,
    enhancement,
    fact_checking,
    injection,
    localization_quality,
    localization_vs_editing,
    query_consistency,
    shared_sets,
    size_curves,
    tracing_vs_neurons,
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
    "tracing-vs-neurons": tracing_vs_neurons,
    "localization-vs-editing": localization_vs_editing,
    "query-consistency": query_consistency,
}


def register_experiment(name: str, module: ModuleType | object, replace: bool = False) -> None:
    """Add an experiment: ``module`` has ``run``, ``table`` and ``PHASES`` (above); its keyword
    options (``--set NAME=VALUE``) are ``run``'s keyword parameters with defaults."""
    missing = [attr for attr in ("run", "table", "PHASES") if not hasattr(module, attr)]
    if missing:
        raise ValueError(f"experiment {name!r} lacks {', '.join(missing)} (see "
                         "mkn.experiments)")
    if name in EXPERIMENTS and not replace:
        raise ValueError(f"experiment {name!r} is already registered (replace=True to "
                         "override)")
    EXPERIMENTS[name] = module
