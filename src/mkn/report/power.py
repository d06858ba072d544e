"""Sample sizes from a power target: how many facts each claim needs, from a pilot study.

For every pre-registered claim (:data:`mkn.report.results.CLAIMS`) that a part of a pilot study
(or the previous study) tested, the interval it measured gives the facts a new study needs to
detect the same effect at the target power (:func:`mkn.experiments.metrics.facts_for_power`).
A claim is measured on the facts that reach it (known in the right languages, with an edit that
took, ...), so the facts to *sample* are the facts needed divided by the claim's yield in the
pilot (facts measured / facts sampled). A study part then samples enough facts for the most
demanding claim it tests, up to a cap; claims still short of their target are named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mkn.experiments.metrics import facts_for_power
from mkn.localization.stats import markdown_table


def claim_needs(study: dict, claims: Sequence, min_facts: int, power: float = 0.8,
                alpha: float = 0.05) -> list[dict]:
    """Per (claim, part) of ``study`` with a tested interval (``claims``: the registered
    claims, :data:`mkn.report.results.CLAIMS`): the facts sampled and measured, the effect
    (value - null), the facts needed at ``power`` (at least ``min_facts``, below which a claim
    is untestable) and the facts to sample for them (needed / yield; None where the effect is
    0 or nothing was measured)."""
    rows = []
    for part in study["parts"]:
        sampled = len(part["facts"])
        for claim in claims:
            if claim.experiment != "localization" and claim.experiment not in part["experiments"]:
                continue
            for m in claim.measure(part):
                if m.entry is None or m.entry.get("value") is None:
                    continue
                measured = m.entry.get("facts", m.entry.get("n"))
                needed = facts_for_power(m.entry, m.null, power, alpha)
                needed = None if needed is None else max(needed, min_facts)
                rows.append({
                    "claim": claim.id + (f"/{m.method}" if m.method else ""),
                    "part": part["part"]["name"], "sampled": sampled, "measured": measured,
                    "effect": m.entry["value"] - m.null, "needed": needed,
                    "to_sample": None if needed is None or not measured
                    else math.ceil(needed * sampled / measured)})
    return rows


def per_relation_for(needs: Sequence[dict], part: str, relations: int, cap: int) -> int:
    """Facts per relation for ``part``: enough to sample what its most demanding claim needs,
    at most ``cap`` (a claim that needs more stays short, and is named)."""
    wanted = [row["to_sample"] for row in needs if row["part"] == part and row["to_sample"]]
    return min(cap, max(1, math.ceil(max(wanted, default=0) / max(1, relations))))


def plan(pilot: dict, parts: Sequence, power: float, alpha: float, cap: int,
         claims: Sequence, min_facts: int) -> dict:
    """The power plan of a study: per claim of the ``pilot`` its needs
    (:func:`claim_needs`), and per part of ``parts`` (``DataPart``-like: name, relations) found
    in the pilot the facts per relation it implies (:func:`per_relation_for`), at most ``cap``
    or the part's own ``max_per_relation`` where smaller (recorded in ``cap_per_part``)."""
    needs = claim_needs(pilot, claims, min_facts, power, alpha)
    piloted = {row["part"] for row in needs}
    caps = {p.name: min(cap, getattr(p, "max_per_relation", None) or cap) for p in parts
            if p.name in piloted}
    return {"power": power, "alpha": alpha, "cap_per_relation": cap, "claims": needs,
            "cap_per_part": {name: own for name, own in caps.items() if own != cap},
            "per_relation": {p.name: per_relation_for(needs, p.name, len(p.relations),
                                                      caps[p.name])
                             for p in parts if p.name in piloted}}


def table(planned: Mapping, measured: Mapping[tuple[str, str], int | None] | None = None
          ) -> str:
    """The plan as a table: per claim and part, the pilot's facts and effect, the facts needed
    for the target power, the facts to sample, and (``measured``: (claim, part) -> facts) the
    facts this study measured it on, and whether that reaches the target."""
    header = ["claim", "part", "pilot: facts measured (of sampled)", "pilot effect",
              f"facts needed for power {planned['power']:g} (alpha {planned['alpha']:g})",
              "facts to sample"]
    if measured is not None:
        header += ["facts measured here", "powered"]
    rows = []
    for row in planned["claims"]:
        line = [row["claim"], row["part"], f"{row['measured']} (of {row['sampled']})",
                f"{row['effect']:.3g}", row["needed"] if row["needed"] is not None
                else "none detectable (effect 0)", row["to_sample"] or "-"]
        if measured is not None:
            here = measured.get((row["claim"], row["part"]))
            line += [here if here is not None else "not measured",
                     "-" if here is None or row["needed"] is None
                     else "yes" if here >= row["needed"] else "no"]
        rows.append(line)
    return markdown_table(header, rows)
