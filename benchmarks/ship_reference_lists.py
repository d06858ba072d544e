"""Copy the reference lists a finished study used (generic and relation neurons, matched by the
content digests its study.json pins) from the cache into a folder to commit beside its config,
so that a fresh machine reads them (``reference_lists:`` in the config) instead of rebuilding
them: the issue-26 lever "a persistent cache of reference lists".

    .venv/bin/python benchmarks/ship_reference_lists.py runs/powered-gemma/study.json \
        docs/results/reference

A study reads a shipped list only when it was built from exactly that study's key (model,
dtype, data, languages, settings, reference sample) and its digest checks
(:func:`mkn.localization.reference.reference_generic`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mkn.localization.generic import GenericNeurons
from mkn.localization.reference import reference_path
from mkn.localization.relations import RelationNeurons
from mkn.report.results import read_study


def pinned(study: dict) -> dict[str, set[str]]:
    """``{kind: digests}`` of the lists the study's parts pinned ("" generic, "relations")."""
    found: dict[str, set[str]] = {"": set(), "relations": set()}
    for part in study["parts"]:
        found[""] |= set((part.get("generic_digest") or {}).values())
        found["relations"] |= set((part.get("relation_digest") or {}).values())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    wanted = pinned(read_study(args.study))
    cache = reference_path({"model": "", "data": ""}).parent
    for kind, cls in (("", GenericNeurons), ("relations", RelationNeurons)):
        missing = set(wanted[kind])
        for path in sorted((cache / kind).glob("*.json")):
            try:
                listed = cls.load(path)
            except ValueError:
                continue
            if listed.digest in missing and listed.source.get("digest") == listed.digest:
                (args.dest / kind).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, args.dest / kind / path.name)
                missing.discard(listed.digest)
                print(f"copied {path} -> {args.dest / kind / path.name}")
        if missing:
            print(f"not in the cache ({kind or 'generic'}): {', '.join(sorted(missing))}")


if __name__ == "__main__":
    main()
