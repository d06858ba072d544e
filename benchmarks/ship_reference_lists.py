"""Copy the reference lists a finished study used (generic and relation neurons, matched by the
content digests its study.json pins) from the cache into a folder to commit beside its config,
so that a fresh machine reads them (``reference_lists:`` in the config) instead of rebuilding
them: the issue-26 lever "a persistent cache of reference lists".

    .venv/bin/python benchmarks/ship_reference_lists.py runs/powered-gemma/study.json \
        docs/results/reference

``--check CONFIG`` then resolves every list of that study config with an empty cache and fails
if any would be built rather than read from ``dest`` (the config's ``reference_lists``).

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


def check(config_path: Path) -> None:
    """Every list of the study at ``config_path`` read from its ``reference_lists``, none
    built (an empty cache; loading the model is the only work)."""
    import os
    import tempfile

    import mkn
    from mkn.jobs.study import (
        load_study_config,
        part_facts,
        part_generic_lists,
        part_relation_lists,
        power_planned,
    )

    config, _ = power_planned(load_study_config(config_path))
    lm = mkn.load_model(config.model, dtype=config.dtype)  # auto: as the study chooses

    def would_build(title: str, total: int):
        raise SystemExit(f"not shipped: {title}")

    with tempfile.TemporaryDirectory() as empty:
        os.environ["MKN_GENERIC_CACHE"] = empty
        for part in config.parts:
            facts = part_facts(part, config)
            part_generic_lists(lm, part, config, {}, would_build, print, [f.id for f in facts])
            part_relation_lists(lm, part, config, {}, would_build, print, facts)
    print(f"every list of {config_path} is read from {config.reference_lists}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--check", type=Path, help="a study config to resolve every list of")
    args = parser.parse_args()
    wanted = pinned(read_study(args.study))
    cache = reference_path({"model": "", "data": ""}).parent
    for kind, cls in (("", GenericNeurons), ("relations", RelationNeurons)):
        missing = set(wanted[kind])  # every file of a digest: methods with the same sets
        for path in sorted((cache / kind).glob("*.json")):
            try:
                listed = cls.load(path)
            except ValueError:
                continue
            if listed.digest in wanted[kind] and listed.source.get("digest") == listed.digest:
                (args.dest / kind).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, args.dest / kind / path.name)
                missing.discard(listed.digest)
                print(f"copied {path} -> {args.dest / kind / path.name}")
        if missing:
            print(f"not in the cache ({kind or 'generic'}): {', '.join(sorted(missing))}")
    if args.check:
        check(args.check)


if __name__ == "__main__":
    main()
