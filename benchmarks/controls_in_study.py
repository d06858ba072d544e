"""How much do the magnitude-matched and same-relation controls differ from the random control?

Read from a study's raw results (``mkn reproduce --out DIR`` writes ``DIR/study.json``; the
committed slim copy has no per-item numbers): the ``localization-quality`` experiment measures
every known item's set beside four controls (:mod:`mkn.interventions.controls`):

- *random*: sets with as many neurons in each layer (the control every table had);
- *magnitude-matched*: random neurons of the same layers whose clean activation magnitude on
  the fact's query ranks near each set neuron's own (:func:`magnitude_matched_sets`);
- *unrelated*: the set's effect on facts of other relations (the specificity control);
- *same-relation*: the set's effect on other facts of the fact's own relation.

Per part, method and intervention: medians over items of each effect, and per-item differences
with 95% intervals over facts: matched minus random effect (how much more high-activation
neurons move p(gold) than arbitrary ones), and same-relation minus unrelated effect (how much of
a set's reach is its relation's rather than the fact's).

    .venv/bin/python benchmarks/controls_in_study.py runs/reproduce/study.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mkn.experiments.common import markdown_table
from mkn.experiments.metrics import clustered_interval
from mkn.report.results import read_study, with_ci

EFFECTS = ("effect", "random_effect", "matched_effect", "unrelated_effect",
           "same_relation_effect")
DIFFERENCES = {"matched - random": ("matched_effect", "random_effect"),
               "same relation - unrelated": ("same_relation_effect", "unrelated_effect")}


def rows(study: dict) -> list[list]:
    """One row per part, method and intervention (module docstring)."""
    out = []
    for part in study["parts"]:
        if "localization-quality" not in part["experiments"]:
            continue  # a part without the experiment (the audits-only part)
        experiment = part["experiments"]["localization-quality"]
        if "result" not in experiment:
            raise ValueError(f"{part['part']['name']}: no raw localization-quality results "
                             "(a slim study.json); pass the run's own study.json")
        items = experiment["result"]["items"]
        for method in experiment["result"].get("methods", []):
            same = part["localization"].get(method, {}).get("same_sets_as")
            if same:  # identical sets get identical controls: not a separate row
                out.append([part["part"]["name"], method, f"(the same sets as {same})",
                            *[""] * (2 + len(EFFECTS) + len(DIFFERENCES) - 1)])
                continue
            for mode in ("suppress", "enhance"):
                measured = [(i["fact_id"], i[method][mode]) for i in items
                            if mode in i.get(method, {})]
                if not measured:
                    continue
                medians = [clustered_interval([(f, e[k]) for f, e in measured
                                               if e.get(k) is not None])["value"]
                           for k in EFFECTS]
                differences = [with_ci(clustered_interval(
                    [(f, e[a] - e[b]) for f, e in measured
                     if e.get(a) is not None and e.get(b) is not None]))
                    for a, b in DIFFERENCES.values()]
                out.append([part["part"]["name"], method, mode, len(measured), *medians,
                            *differences])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a study.json with raw results")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    study = read_study(args.study)
    text = (f"{args.study} ({study['config']['model']}, {study['model'].get('dtype', '?')}; "
            f"{study.get('machine', '?')})\n\n"
            + markdown_table(["part", "method", "intervention", "items", "effect",
                              "random set", "magnitude-matched set", "unrelated facts",
                              "same-relation facts", *[f"{d} [95% CI]" for d in DIFFERENCES]],
                             rows(study)))
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
