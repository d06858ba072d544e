"""Attribution methods, one file each (:mod:`.registry` is the contract).

Built in: ``ig`` and ``amig`` (:mod:`.ig`), ``grad-x-act`` (:mod:`.grad_x_act`), ``patching``
(:mod:`.patching`). A new method is
a file that calls :func:`register_method`; importing it makes ``--method NAME`` work in every
command, experiment and the study.
"""

from mkn.attribution.methods import grad_x_act, ig, patching  # noqa: F401  (registers built-ins)
from mkn.attribution.methods.registry import (
    Method,
    Settings,
    StepScores,
    get_method,
    method_names,
    register_method,
)

__all__ = ["Method", "Settings", "StepScores", "get_method", "method_names", "register_method"]
