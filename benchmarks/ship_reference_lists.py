"""Copy the reference lists a finished study used (generic and relation neurons, matched by the
content digests its study.json pins) from the cache, or from the folder its config already
ships, into a folder to commit beside its config, so that a fresh machine reads them
(``reference_lists:`` in the config) instead of rebuilding them: the issue-26 lever "a
persistent cache of reference lists".

    .venv/bin/python benchmarks/ship_reference_lists.py runs/powered-gemma/study.json \
        docs/results/reference

Given a study config (``.yaml``) instead of a study.json, it first builds every list of that
study (or reads it from the cache or the shipped folder; no experiment runs) and then ships
them, so a new config's lists are shipped before its first full run.

``--check CONFIG`` then resolves every list of that study config with an empty cache and fails
if any would be built rather than read from ``dest`` (the config's ``reference_lists``).

A study reads a shipped list only when it was built from exactly that study's key (model,
dtype, data, languages, settings, reference sample) and its digest checks
(:func:`mkn.localization.reference.reference_generic`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
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


def resolve(config_path: Path, task: Callable[[str, int], Callable[[str], None]]
            ) -> dict[str, set[str]]:
    """Every list of the study at ``config_path`` as the study resolves it (the cache, then its
    ``reference_lists``, else built with ``task`` as the progress factory): ``{kind: digests}``
    as :func:`pinned` gives them."""
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
    found: dict[str, set[str]] = {"": set(), "relations": set()}
    for part in config.parts:
        facts = part_facts(part, config)
        generic = part_generic_lists(lm, part, config, {}, task, print, [f.id for f in facts])
        relations = part_relation_lists(lm, part, config, {}, task, print, facts)
        found[""] |= set(generic.digests.values())
        found["relations"] |= set(relations.digests.values())
    return found


def check(config_path: Path) -> None:
    """Every list of the study at ``config_path`` read from its ``reference_lists``, none
    built (an empty cache; loading the model is the only work)."""
    def would_build(title: str, total: int):
        raise SystemExit(f"not shipped: {title}")

    with tempfile.TemporaryDirectory() as empty:
        os.environ["MKN_GENERIC_CACHE"] = empty
        resolve(config_path, would_build)
    print(f"every list of {config_path} is read from its reference_lists")


def ship(wanted: dict[str, set[str]], dest: Path, shipped: str | None = None) -> None:
    """Copy the lists with the ``wanted`` digests into ``dest`` (generic at the top, relation
    lists under ``relations/``) from wherever the study read them: the cache, or the folder
    its config ships (``shipped``, its ``reference_lists``); says which digests neither holds."""
    cache = reference_path({"model": "", "data": ""}).parent
    folders = [cache, *([Path(shipped)] if shipped else [])]
    for kind, cls in (("", GenericNeurons), ("relations", RelationNeurons)):
        missing = set(wanted[kind])  # every file of a digest: methods with the same sets
        for path in (p for folder in folders for p in sorted((folder / kind).glob("*.json"))):
            try:
                listed = cls.load(path)
            except ValueError:
                continue
            if listed.digest in wanted[kind] and listed.source.get("digest") == listed.digest:
                missing.discard(listed.digest)
                target = dest / kind / path.name
                if target.resolve() != path.resolve():  # shipping into the folder it came from
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
                    print(f"copied {path} -> {target}")
        if missing:
            print(f"in none of {', '.join(map(str, folders))} ({kind or 'generic'}): "
                  f"{', '.join(sorted(missing))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a finished study.json, or a study config "
                        "(.yaml) whose lists to build first")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--check", type=Path, help="a study config to resolve every list of")
    args = parser.parse_args()
    if args.study.suffix in (".yaml", ".yml"):
        from mkn.cli import ProgressBars  # a bar, or a plain line every 30 s under nohup
        from mkn.jobs.study import load_study_config

        started = time.perf_counter()
        with ProgressBars() as bars:
            wanted = resolve(args.study, bars.task)
        print(f"every list of {args.study} resolved in {time.perf_counter() - started:.0f} s")
        shipped = load_study_config(args.study).reference_lists
    else:
        study = read_study(args.study)
        wanted, shipped = pinned(study), study["config"].get("reference_lists")
    ship(wanted, args.dest, shipped)
    if args.check:
        check(args.check)


if __name__ == "__main__":
    main()
