"""Command line: ``mkn attribute | demo``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

try:
    import typer
except ImportError:  # the lean install: `pip install mkn-neurons` has no command line
    raise SystemExit("error: mkn's command line needs its extra: pip install "
                     "'mkn-neurons[cli]'") from None
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

app = typer.Typer(help="mkn: multilingual knowledge neurons (--debug: tracebacks on errors).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(soft_wrap=True)  # piped output: long lines stay whole, not cut at 80


class Heartbeat:
    """Where the console is not a terminal (CI logs, ``nohup``), a line at least every
    ``every`` seconds while work runs: the last line :meth:`note` was given (phase, item,
    counts) and the time since it. Silent on a terminal (bars and spinners show it there)."""

    def __init__(self, what: str, every: float = 30.0):
        import threading

        self.every, self.line = every, what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._last = self._start = time.monotonic()

    def note(self, line: str, said: bool = False) -> None:
        """What is being done now; ``said``: a line was just printed (the clock restarts)."""
        self.line = line
        if said:
            self._last = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            if time.monotonic() - self._last >= self.every:
                self._last = time.monotonic()
                _say(f"{self.line} ... still working, elapsed {self._last - self._start:.0f} s")

    def __enter__(self) -> Heartbeat:
        if not console.is_terminal:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@contextmanager
def _working(what: str) -> Iterator[None]:
    """A spinner on a terminal, a :class:`Heartbeat` line elsewhere, while ``what`` runs."""
    with console.status(escape(what)), Heartbeat(what):
        yield


def _version(value: bool) -> None:
    if value:
        from mkn import __version__

        print(f"mkn {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print mkn's version and exit.")]
        = False) -> None:
    """mkn: multilingual knowledge neurons (--debug: tracebacks on errors)."""

def _run_default(name: str) -> str:
    """What an unset run option means, from the run configuration's own defaults
    (:class:`mkn.jobs.config.RunConfig`, :class:`mkn.localization.locate.LocateConfig`), for
    ``--help``: the flags default to None so that a ``--config`` file can set them."""
    from mkn.jobs.config import RunConfig
    from mkn.localization.locate import LocateConfig

    fields = {**LocateConfig.model_fields, **RunConfig.model_fields}
    value = fields[name].get_default(call_default_factory=True)
    if value is None:
        return {"limit": "all facts", "relations": "all", "per_relation": "no cap",
                "max_queries": "all", "device_map": "none (one device)"}[name]
    if isinstance(value, bool):
        return name.replace("_", "-") if value else f"no-{name.replace('_', '-')}"
    return str(value)


def _experiment_names() -> tuple[str, ...]:
    from mkn.experiments import EXPERIMENTS

    return tuple(EXPERIMENTS)


EXPERIMENT_NAMES = _experiment_names()  # the registry's, for --help


def _methods() -> tuple[str, ...]:
    from mkn.attribution.methods import method_names

    return method_names()


def _shown(name: str) -> str:
    return f"{_run_default(name)}, or --config's"


ModelOpt = Annotated[str, typer.Option("--model", "-m",
                                       help="gemma-3-270m (embedded), a local HF dir or .gguf")]
MethodOpt = Annotated[str, typer.Option(
    help=f"Attribution method: {', '.join(_methods())} (mkn.attribution.methods; amig: "
         "architecture-adapted baseline, ig: zero baseline).")]
StepsOpt = Annotated[int, typer.Option(min=1, help="Integration steps per layer.")]
RuleOpt = Annotated[str, typer.Option(help="Quadrature rule: left, trapezoid, gauss-legendre.")]


RunMethodOpt = Annotated[str | None, typer.Option(show_default=_shown("method"),
                                                 help=f"{', '.join(_methods())} or matrice.")]
RunStepsOpt = Annotated[int | None, typer.Option(min=1, show_default=_shown("steps"),
                                                 help="Integration steps.")]
RunRuleOpt = Annotated[str | None, typer.Option(show_default=_shown("rule"),
                                                help="Quadrature rule: left, trapezoid, "
                                                     "gauss-legendre.")]
LenientOpt = Annotated[bool | None, typer.Option(show_default=_shown("lenient"),
                                                 help="Skip bad data records (reported) "
                                                      "instead of stopping.")]
WorkersOpt = Annotated[int | None, typer.Option(min=1, show_default=_shown("workers"),
                                                help="Ray actors (model copies).")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", show_default="none", help="YAML run configuration (flags override it).")]
DataOpt = Annotated[str | None, typer.Option(
    show_default=_shown("data"),
    help="builtin, mlama:PATH, bmlama:PATH or jsonl:PATH (PATH relative to $MKN_DATA).")]
LanguagesOpt = Annotated[str | None, typer.Option(help="Comma-separated languages, e.g. en,fr,ja "
                                                       "(default: all of the data's).")]
LimitOpt = Annotated[int | None, typer.Option(show_default=_shown("limit"),
                                              help="Use the first N facts.")]
RelationsOpt = Annotated[str | None, typer.Option(
    show_default=_shown("relations"), help="Only these relations, comma-separated (e.g. "
                                           "P36,P37).")]
PerRelationOpt = Annotated[int | None, typer.Option(
    min=1, show_default=_shown("per_relation"),
    help="At most N facts per relation, interleaved (balanced sample).")]
ShuffleOpt = Annotated[bool | None, typer.Option(
    show_default=_shown("shuffle"),
    help="Sample facts at random (with --seed) instead of taking the first ones.")]
MaxQueriesOpt = Annotated[int | None, typer.Option(
    min=1, show_default=_shown("max_queries"),
    help="Attribute at most N queries per fact and language.")]
DTYPE_HELP = ("auto (default: bfloat16 where the device computes it natively, i.e. a GPU or "
              "a CPU with AVX512-BF16/AMX; float32 elsewhere), float32, bfloat16 or float16.")
RunDtypeOpt = Annotated[str | None, typer.Option(help=DTYPE_HELP)]
BatchOpt = Annotated[int | None, typer.Option(min=1, help="Rows per forward/backward pass "
                                                        "(default: from the device's free "
                                                        "memory).")]
GpusOpt = Annotated[float | None, typer.Option(min=0.0, help="GPUs each Ray actor reserves "
                                                          "(default: one each where there are "
                                                          "GPUs; 0: CPU actors).")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto (default: CUDA when present), cpu, "
                                                    "cuda or cuda:N.")]
DeviceMapOpt = Annotated[str | None, typer.Option(
    show_default="none (one device)",
    help="Split the model over several devices with accelerate's device map (auto).")]
SeedOpt = Annotated[int | None, typer.Option(
    show_default=_shown("seed"), help="Random seed (sampling, unrelated facts, splits).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", show_default="off",
                                        help="No progress bar.")]
KnownOpt = Annotated[str | None, typer.Option(
    help="Which (fact, language) items to work on: auto (default: the gold object ranks first "
         "among the candidates where the data has them, else greedy decoding gets it), rank, "
         "greedy, either (rank or greedy: keeps what the rank criterion drops while greedy "
         "decoding gets the object), or any (no filter).")]
GenericOpt = Annotated[str | None, typer.Option(
    help="Generic neurons (knowledge neurons of many relations' facts): auto (default: left "
         "out, using the cached reference list of this model and data, built on first use), "
         "keep (leave them in, as Dai et al. and AMIG do), or a list written by mkn generic.")]
RelationNeuronsOpt = Annotated[str | None, typer.Option(
    "--relation-neurons", show_default="auto",
    help="Relation neurons (knowledge neurons of many facts of the fact's relation): auto "
         "(default: left out, so a set is the fact's own; the cached reference list of this "
         "model, data and relations, its facts held out), keep (leave them in, as Dai et al. "
         "and AMIG do), or a relation-neuron list file.")]


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
    return typer.Exit(code=2)


def _load(model: str, dtype: str | None, device: str | None = None, device_map=None):
    import mkn

    with _working(f"loading {model} (the first load converts the GGUF, ~1 min)"):
        lm = mkn.load_model(model, dtype=dtype, device=device or "auto", device_map=device_map)
    if lm.dtype_choice:  # said on stderr: --json output stays one JSON line
        Console(stderr=True).print(f"dtype {escape(lm.dtype_choice)}", highlight=False,
                                   soft_wrap=True)
    return lm


@app.command()
def attribute(
    prompt: Annotated[str, typer.Option(help="Text with [Y] for the object, or the object "
                                             "implied at the end.")],
    target: Annotated[str, typer.Option(help="The object, e.g. Paris.")],
    model: ModelOpt = "gemma-3-270m",
    method: MethodOpt = "amig",
    steps: StepsOpt = 20,
    rule: RuleOpt = "left",
    top: Annotated[int, typer.Option(min=1, help="How many top neurons to show.")] = 10,
    dtype: RunDtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    as_json: Annotated[bool, typer.Option("--json", show_default="off",
                                          help="Print JSON for machines.")] = False,
) -> None:
    """Attribute p(target | prompt) to FFN neurons and show the top ones."""
    import mkn
    from mkn.attribution.methods import get_method

    try:
        get_method(method)  # checked before the model loads
    except ValueError as error:
        raise _fail(error) from error
    from mkn.attribution.rules import RULES
    from mkn.localization.reference import cached_lists

    if rule not in RULES:
        raise _fail(ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}"))
    try:
        lm = _load(model, dtype, device, device_map)
        with _working(f"attributing {prompt!r} -> {target!r} ({method}, {steps} steps x "
                      f"{lm.n_layers} layers)"):
            result = mkn.attribute(lm, prompt=prompt, target=target, method=method,
                                   steps=steps, rule=rule)
    except (ValueError, IndexError, TypeError) as error:
        raise _fail(error) from error
    lists = cached_lists(lm)
    generic = set(lists[0][0].neurons()) if lists else set()
    top_neurons = result.top(top)
    if as_json:
        payload = {"model": model, **result.to_dict(top=top),
                   "generic": [[layer, index] for layer, index, _ in top_neurons
                               if (layer, index) in generic],
                   "generic_list": str(lists[0][1]) if lists else None}
        typer.echo(json.dumps(payload, ensure_ascii=False))
        return
    console.print(f"[bold]{escape(model)}[/] {escape(repr(prompt))} -> {escape(repr(target))} "
                  f"(tokens {escape(str(result.target_tokens))})")
    path = get_method(method).path
    console.print(f"p(target) = {result.prob:.4g}   method {method}"
                  + (f", {steps} steps, rule {rule}" if path else ""))
    table = Table("rank", "layer", "neuron", "score", "generic", title=f"top {top} neurons")
    for rank, (layer, index, score) in enumerate(top_neurons, 1):
        table.add_row(str(rank), str(layer), str(index), f"{score:.4g}",
                      "generic" if (layer, index) in generic else "")
    console.print(table)
    if path:
        console.print(f"completeness gap: {result.weighted_completeness_gap:.3g} over the "
                      "layers (sum of |a layer's scores - (p(x) - p(baseline))| / sum of "
                      f"|p(x) - p(baseline)|); worst layer {result.relative_completeness_gap:.3g}"
                      " (relative to its own p(x) - p(baseline))")
    if lists:
        _say(f"generic neurons (knowledge neurons of many relations' facts) from {lists[0][1]}")
    else:
        _say(f"no generic-neuron list is cached for this model: `mkn generic --model {model} "
             f"--dtype {str(lm.dtype).removeprefix('torch.')}` builds one (then this command flags "
             "them)")


@app.command()
def trace(
    prompt: Annotated[str, typer.Option(help="Text with [Y] for the object, or the object "
                                             "implied at the end.")],
    target: Annotated[str, typer.Option(help="The object, e.g. Paris.")],
    subject: Annotated[str, typer.Option(help="The subject as written in the prompt, e.g. "
                                              "France: its tokens are corrupted.")],
    model: ModelOpt = "gemma-3-270m",
    samples: Annotated[int, typer.Option(min=1, help="Noise draws.")] = 10,
    noise: Annotated[float, typer.Option(min=0.0, help="Noise scale, times the embeddings' "
                                                       "std (ROME: 3).")] = 3.0,
    window: Annotated[int, typer.Option(min=1, help="Layers restored together for mlp and "
                                                    "attn (ROME: 10).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    dtype: RunDtypeOpt = None,
    device: DeviceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", show_default="off",
                                          help="Print JSON for machines.")] = False,
) -> None:
    """Causal tracing (ROME, Meng et al. 2022): how much restoring one layer's hidden state,
    MLP output or attention output at one position recovers p(target) when the subject is
    corrupted with noise."""
    from mkn.localization.tracing import causal_trace

    try:
        lm = _load(model, dtype, device)
        with _working(f"tracing {prompt!r} -> {target!r} ({lm.n_layers} layers x 3 kinds)"):
            found = causal_trace(lm, prompt, target, subject, samples=samples, noise=noise,
                                 window=window, seed=seed)
    except (ValueError, IndexError) as error:
        raise _fail(error) from error
    if as_json:
        typer.echo(json.dumps({
            "model": model, "prompt": prompt, "target": target, "subject": subject,
            "tokens": found.tokens, "subject_positions": found.subject_positions,
            "clean_prob": found.clean_prob, "corrupted_prob": found.corrupted_prob,
            "samples": samples, "noise": noise, "window": window,
            "effects": {kind: grid.tolist() for kind, grid in found.effects.items()}},
            ensure_ascii=False))
        return
    _say(f"p(target): clean {found.clean_prob:.4g}, subject corrupted {found.corrupted_prob:.4g} "
         f"({samples} draws, noise {noise:g} x the embeddings' std); tokens {found.tokens}, "
         f"subject at {found.subject_positions}")
    table = Table("layer", *[f"{kind} (last subject token)" for kind in found.effects],
                  title="indirect effect: p(restored) - p(corrupted)")
    for layer in range(lm.n_layers):
        table.add_row(str(layer), *[f"{float(found.layer_profile(kind)[layer]):.3g}"
                                    for kind in found.effects])
    console.print(table)
    for kind in found.effects:
        layer, position, value = found.peak(kind)
        _say(f"{kind}: largest effect {value:.3g} at layer {layer}, token {position} "
             f"({found.tokens[position]!r})")


class ProgressBars:
    """Rich progress bars (items done, rate, ETA), one task per phase; silent when quiet.

    Where the console is not a terminal (CI logs, ``nohup``), a plain line is printed instead,
    at most every ``LOG_EVERY`` seconds and at the end of each phase.
    """

    LOG_EVERY = 30.0
    COLUMNS = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())

    def __init__(self, quiet: bool = False):
        self.progress = None if quiet else Progress(*self.COLUMNS, console=console)
        self.heartbeat = Heartbeat("starting", self.LOG_EVERY)

    def __enter__(self) -> ProgressBars:
        if self.progress:
            self.progress.start()
            self.heartbeat.__enter__()  # within an item longer than LOG_EVERY: still a line
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.heartbeat.__exit__(*exc)
            self.progress.stop()

    def task(self, title: str, total: int) -> Callable[[str], None]:
        """A new bar; returns the function to call once per item done."""
        if self.progress is None:
            return lambda _: None
        progress = self.progress
        task = progress.add_task(title, total=total, rate="")
        logged = [0.0]
        self.heartbeat.note(f"{title}: 0/{total} done")

        def tick(item: str) -> None:
            progress.advance(task)
            done, elapsed = progress.tasks[task].completed, progress.tasks[task].elapsed or 0.0
            rate = f"{elapsed / done:.1f} s/item" if done else ""
            progress.update(task, rate=rate, description=f"{title} ({item})")
            say = not console.is_terminal and (done >= total
                                               or elapsed - logged[0] >= self.LOG_EVERY)
            self.heartbeat.note(f"{title}: {done:g}/{total} done (last: {item})", said=say)
            if say:
                logged[0] = elapsed
                left = (total - done) * elapsed / done if done else 0.0
                _say(f"{title}: {done:g}/{total} done, {rate}, elapsed {elapsed:.0f} s, "
                     f"ETA {left:.0f} s")

        return tick


def _prepare(config: Path | None, claim: dict | None = None, **flags):
    """:func:`mkn.jobs.pipeline.prepare` with this command line's model loading and printing."""
    from mkn.jobs.pipeline import prepare

    p = prepare(config, _load, _say, claim, **flags)
    return p.cfg, p.facts, p.languages, p.lm, p.meta, p.run


def _probe(lm, facts, languages: list[str], criterion: str, bars: ProgressBars):
    """Which items the model knows (a progress bar, then one line of counts)."""
    from mkn.jobs.pipeline import probe

    return probe(lm, facts, languages, criterion, bars.task, _say)


@app.command()
def locate(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/locate"),
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model (default "
                                                                     "gemma-3-270m).")] = None,
    data: DataOpt = None,
    languages: LanguagesOpt = None,
    method: RunMethodOpt = None,
    limit: LimitOpt = None,
    relations: RelationsOpt = None,
    per_relation: PerRelationOpt = None,
    shuffle: ShuffleOpt = None,
    steps: RunStepsOpt = None,
    rule: RunRuleOpt = None,
    max_queries: MaxQueriesOpt = None,
    batch_size: BatchOpt = None,
    dtype: RunDtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    seed: SeedOpt = None,
    lenient: LenientOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed run in OUT.")] = False,
    backend: Annotated[str | None, typer.Option(help="local (default) or ray: spread facts "
                                                     "over Ray actors.")] = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusOpt = None,
    known: KnownOpt = None,
    generic: GenericOpt = None,
    relation_neurons: RelationNeuronsOpt = None,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Knowledge neurons per fact and language the model knows, language-agnostic and
    degenerate neurons."""
    from mkn.jobs.pipeline import backend_for, set_lists
    from mkn.localization.run import run_locate

    try:
        cfg, facts, langs, lm, meta, run = _prepare(
            config, dict(directory=out, kind="locate", resume=resume), model=model, data=data,
            languages=languages, method=method, limit=limit, relations=relations,
            per_relation=per_relation, shuffle=shuffle, steps=steps, rule=rule,
            max_queries=max_queries,
            batch_size=batch_size, dtype=dtype, device=device, device_map=device_map, seed=seed,
            lenient=lenient,
            backend=backend, workers=workers, gpus_per_worker=gpus_per_worker, known=known,
            generic=generic, relation_neurons=relation_neurons)
        with run, ProgressBars(quiet) as bars:
            known_sample = _probe(lm, facts, langs, cfg.locate.known, bars)
            _, lists = set_lists(lm, cfg, langs, facts, [cfg.locate.method], task=bars.task,
                                 say=_say, run=run)
            generic_list = lists[cfg.locate.method]
            with backend_for(cfg, lm) as runner:
                summary = run_locate(lm, facts, langs, cfg.locate, out, resume, meta,
                                     on_fact=bars.task(f"locate ({cfg.locate.method})",
                                                       len(facts)),
                                     backend=runner, known=known_sample, generic=generic_list,
                                     run=run)
    except (ValueError, FileExistsError, FileNotFoundError, ImportError) as error:
        raise _fail(error) from error
    table = Table("language", "facts probed", "known (located)", "skipped", "mean #neurons",
                  "mean generic left out", title="knowledge neurons")
    counts = summary["knowledge"]["per_language"]
    for lang in langs:
        c = counts.get(lang, {"items": 0, "located": 0, "skipped": 0})
        s = summary["per_language"].get(lang, {"mean_neurons": 0.0, "mean_generic": 0.0})
        table.add_row(escape(lang), str(c["items"]), str(c["located"]), str(c["skipped"]),
                      f"{s['mean_neurons']:.1f}", f"{s['mean_generic']:.1f}")
    console.print(table)
    agnostic = summary["language_agnostic"]
    console.print(f"language-agnostic neurons: {agnostic['facts_with_any']}/{summary['facts']} "
                  f"facts have some (mean {agnostic['mean_neurons']:.2f}, soft "
                  f"{agnostic['mean_soft_neurons']:.2f}); degenerate pairs in "
                  f"{summary['degenerate']['with_pairs']}/{summary['degenerate']['records']} "
                  "fact-languages")
    _say(f"results in {out}/ (neurons.jsonl, language_agnostic.jsonl, degenerate.jsonl, "
         "summary.json)")


@app.command()
def probe(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/probe"),
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model (default "
                                                                     "gemma-3-270m).")] = None,
    data: DataOpt = None,
    languages: LanguagesOpt = None,
    limit: LimitOpt = None,
    relations: RelationsOpt = None,
    per_relation: PerRelationOpt = None,
    shuffle: ShuffleOpt = None,
    dtype: RunDtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    seed: SeedOpt = None,
    lenient: LenientOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")] = 16,
    resume: Annotated[bool, typer.Option(help="Continue a killed probe in OUT.")] = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Which facts does the model know? Per language and relation, by candidate rank and by
    greedy decoding (forward passes only, no attribution); writes OUT/knowledge.jsonl and
    OUT/knowledge.md."""
    import time

    from mkn.localization.probe import probe_table, run_probe

    try:
        cfg, facts, langs, lm, meta, run = _prepare(
            config, dict(directory=out, kind="probe", resume=resume), model=model, data=data,
            languages=languages, limit=limit, relations=relations, per_relation=per_relation,
            shuffle=shuffle, dtype=dtype, device=device, device_map=device_map, seed=seed,
            lenient=lenient)
        started = time.perf_counter()
        with run, ProgressBars(quiet) as bars:
            summary = run_probe(lm, facts, langs, out, bars.task("probe", len(facts)),
                                batch_size, {"model": cfg.model, "dtype": cfg.dtype,
                                             "data": cfg.data, "facts": len(facts)},
                                resume=resume, run=run)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(error) from error
    console.print(probe_table(summary), markup=False, soft_wrap=True)
    console.print(f"{len(facts)} facts x {len(langs)} languages in "
                  f"{time.perf_counter() - started:.0f} s; results in {out}/ (knowledge.jsonl, "
                  "knowledge.md)", markup=False, highlight=False)


@app.command()
def generic(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model (default "
                                                                     "gemma-3-270m).")] = None,
    data: DataOpt = None,
    languages: LanguagesOpt = None,
    method: RunMethodOpt = None,
    steps: RunStepsOpt = None,
    rule: RunRuleOpt = None,
    dtype: RunDtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    known: KnownOpt = None,
    share: Annotated[float | None, typer.Option(min=0.0, max=1.0,
                                                show_default=_shown("generic_share"),
                                                help="Share of other relations' reference "
                                                     "facts a neuron serves from which it is "
                                                     "generic.")]
    = None,
    reference_facts: Annotated[int, typer.Option(min=2, help="Facts in the reference sample: "
                                                          "known in at least one language, "
                                                          "at most 4 per relation.")] = 48,
    rebuild: Annotated[bool, typer.Option(help="Recompute the cached list.")] = False,
    allow_thin: Annotated[bool, typer.Option(
        "--allow-thin", show_default="off",
        help="Build the list even from fewer than 20 reference facts or 4 relations (with a "
             "warning): a neuron's share across relations says little there.")] = False,
    out: Annotated[Path | None, typer.Option(show_default="none", help="Also write the list "
                                                  "here (for --generic "
                                                  "PATH).")] = None,
    top: Annotated[int, typer.Option(min=1, help="Generic neurons shown.")] = 10,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The generic neurons of a model on a data source: knowledge neurons of many facts of
    different relations, left out of knowledge-neuron sets by default. Computed on a reference
    sample (mkn.localization.generic), cached; --rebuild recomputes it."""
    from mkn.localization.reference import (
        MIN_REFERENCE_FACTS,
        MIN_REFERENCE_RELATIONS,
        ThinReference,
        reference_generic,
    )

    try:
        cfg, _, langs, lm, _, _ = _prepare(
            config, model=model, data=data, languages=languages, method=method, steps=steps,
            rule=rule,
            dtype=dtype, device=device, device_map=device_map, known=known, generic_share=share,
            limit=1)
        with ProgressBars(quiet) as bars:
            thin = {"min_facts": 1, "min_relations": 1} if allow_thin else {}
            found, path, built = reference_generic(lm, cfg.data, langs, cfg.locate,
                                                   rebuild=rebuild, task=bars.task,
                                                   facts=reference_facts, **thin)
        if found.facts < MIN_REFERENCE_FACTS or found.relations < MIN_REFERENCE_RELATIONS:
            _say(f"warning: {found.facts} reference facts of {found.relations} relations, "
                 f"fewer than the {MIN_REFERENCE_FACTS} facts of {MIN_REFERENCE_RELATIONS} "
                 "relations a meaningful list needs (built because of --allow-thin)")
        if out is not None:
            found.save(out)
    except ThinReference as error:
        raise _fail(ValueError(f"{error}; --allow-thin builds it anyway")) from error
    except (ValueError, FileNotFoundError) as error:
        raise _fail(error) from error
    table = Table("language", "reference facts known and located", title=f"reference sample: "
                  f"{found.facts} facts known in at least one language "
                  f"({found.source.get('probed', '?')} probed)")
    for lang, row in found.summary(langs).items():
        table.add_row(escape(lang), str(row["reference_items"]))
    console.print(table)
    shown = ", ".join(f"({layer}, {index}): {value:.2f}" for (layer, index), value in
                      list(found.neurons().items())[:top])
    console.print(f"{len(found.neurons())} generic neurons (share >= {found.threshold:g}, one "
                  f"list for every language); top {top} (layer, index): share: {shown}",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"{'built' if built else 'cached'}: {path}" + (f"; copy: {out}" if out else "")
                  + f"\nrebuild with: {found.source.get('rebuild', 'mkn generic --rebuild')}",
                  markup=False, highlight=False, soft_wrap=True)


@app.command(name="relations")
def relations_command(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model (default "
                                                                     "gemma-3-270m).")] = None,
    data: DataOpt = None,
    languages: LanguagesOpt = None,
    relations: Annotated[str | None, typer.Option(
        show_default="every relation of the data",
        help="Relations to list, comma-separated (e.g. P36,P37).")] = None,
    method: RunMethodOpt = None,
    steps: RunStepsOpt = None,
    dtype: RunDtypeOpt = None,
    device: DeviceOpt = None,
    known: KnownOpt = None,
    share: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, show_default=_shown("relation_share"),
        help="Share of its relation's reference facts a neuron serves from which it is a "
             "relation neuron.")] = None,
    per_relation: Annotated[int, typer.Option(min=3, help="Known reference facts sought per "
                                                          "relation.")] = 6,
    held_out: Annotated[str | None, typer.Option(
        show_default="none", help="Fact ids kept out of the reference sample (the facts you "
                                  "will evaluate), comma-separated.")] = None,
    rebuild: Annotated[bool, typer.Option(help="Recompute the cached list.")] = False,
    out: Annotated[Path | None, typer.Option(show_default="none", help="Also write the list "
                                                  "here (for --relation-neurons PATH).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """The relation neurons of a model on a data source: knowledge neurons of many facts of one
    relation, left out of knowledge-neuron sets by default (each set is then the fact's own).
    Computed on a reference sample per relation (mkn.localization.relations), cached."""
    from mkn.localization.reference import reference_pool, reference_relations

    try:
        cfg, _, langs, lm, _, _ = _prepare(
            None, model=model, data=data, languages=languages, method=method, steps=steps,
            dtype=dtype, device=device, known=known, relation_share=share, limit=1)
        wanted = ([r.strip() for r in relations.split(",") if r.strip()] if relations else
                  sorted({f.relation for f in reference_pool(cfg.data, langs)}))
        with ProgressBars(quiet) as bars:
            found, path, built = reference_relations(
                lm, cfg.data, langs, cfg.locate, wanted,
                held_out=[x.strip() for x in (held_out or "").split(",") if x.strip()],
                per_relation=per_relation, rebuild=rebuild, task=bars.task)
        if out is not None:
            found.save(out)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(error) from error
    table = Table("relation", "reference facts", "relation neurons",
                  title=f"relation neurons (share >= {found.threshold:g} of a relation's known "
                        "reference facts)")
    covered, sizes = found.covered(), found.sizes()
    for relation in wanted:
        table.add_row(escape(relation), str(covered.get(relation, 0)),
                      str(sizes[relation]) if relation in sizes
                      else "none: too few known reference facts")
    console.print(table)
    console.print(f"{'built' if built else 'cached'}: {path}" + (f"; copy: {out}" if out else ""),
                  markup=False, highlight=False, soft_wrap=True)


@app.command()
def experiment(
    name: Annotated[str, typer.Argument(help=", ".join(EXPERIMENT_NAMES) + ".")],
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/NAME).")]
    = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model (default "
                                                                     "gemma-3-270m).")] = None,
    data: DataOpt = None,
    languages: LanguagesOpt = None,
    method: Annotated[str | None, typer.Option(
        show_default=_shown("method"),
        help=f"{', '.join(_methods())} or matrice (localization-quality compares ig, amig and "
             "matrice by default; --set methods=... others).")] = None,
    limit: LimitOpt = None,
    relations: RelationsOpt = None,
    per_relation: PerRelationOpt = None,
    shuffle: ShuffleOpt = None,
    steps: RunStepsOpt = None,
    rule: RunRuleOpt = None,
    max_queries: MaxQueriesOpt = None,
    batch_size: BatchOpt = None,
    dtype: RunDtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    seed: SeedOpt = None,
    option: Annotated[list[str] | None, typer.Option(
        "--set", show_default="none",
        help="An experiment's own option, NAME=VALUE, repeatable (e.g. lambda_new=8 for "
             "injection, factor=3 for enhancement, wrong=3 for fact-checking).")]
    = None,
    known: KnownOpt = None,
    generic: GenericOpt = None,
    relation_neurons: RelationNeuronsOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed run in OUT (attributions "
                                              "already stored are not computed again).")]
    = False,
    backend: Annotated[str | None, typer.Option(help="local (default) or ray: attributions "
                                                     "computed on Ray actors.")] = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusOpt = None,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Run one of the papers' experiments on the items the model knows, every effect beside its
    controls; writes OUT/NAME.json and OUT/NAME.md (OUT: runs/NAME by default)."""

    from mkn.experiments import EXPERIMENTS
    from mkn.experiments.common import Setup, experiment_options, methods_of, write_result
    from mkn.jobs.pipeline import backend_for, prefetch_attributions, set_lists
    from mkn.runs.store import ATTRIBUTIONS, RunStore, StoredAttributions

    if name not in EXPERIMENTS:
        raise _fail(ValueError(f"unknown experiment {name!r}; choose one of "
                               f"{', '.join(EXPERIMENTS)}"))
    module = EXPERIMENTS[name]
    out = Path("runs") / name if out is None else out
    try:
        options = experiment_options(module.run, option or [])
        cfg, facts, langs, lm, meta, run = _prepare(
            config, dict(directory=out, kind="experiment", resume=resume,
                         identity={"experiment": name, "options": options}),
            model=model, data=data, languages=languages, method=method, limit=limit,
            relations=relations, per_relation=per_relation, shuffle=shuffle, steps=steps, rule=rule,
            max_queries=max_queries, batch_size=batch_size, dtype=dtype, device=device,
            device_map=device_map, seed=seed, known=known, generic=generic,
            relation_neurons=relation_neurons, backend=backend, workers=workers,
            gpus_per_worker=gpus_per_worker)
        with run, RunStore(out, {"experiment": name, "options": options, **meta}, resume,
                           (ATTRIBUTIONS,), run=run) as store:
            setup = Setup.of(name, cfg, langs, facts, options)
            setup.date = run.created
            _say(setup.describe())
            cache = StoredAttributions(store)
            with ProgressBars(quiet) as bars:
                known_sample = _probe(lm, facts, langs, cfg.locate.known, bars)
                methods = methods_of(module.run, options) or (cfg.locate.method,)
                _, lists = set_lists(lm, cfg, langs, facts, methods, task=bars.task, say=_say,
                                     run=run)
                if cfg.backend != "local":  # attributions on the workers, measures here
                    with backend_for(cfg, lm) as runner:
                        prefetch_attributions(runner, facts, langs, cfg.locate, methods,
                                              known_sample, cache, bars.task,
                                              f"attributions ({cfg.backend}, {cfg.workers} "
                                              "workers)")
                result = module.run(lm, list(facts), langs, cfg.locate, seed=cfg.seed,
                                    progress=bars.task(name, len(facts) * module.PHASES),
                                    cache=cache, known=known_sample, generic=lists,
                                    **options)
            result["config"] = {"locate": cfg.locate.model_dump(), **meta}
            path = write_result(out, setup, result, module.table(result))
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise _fail(error) from error
    _say(module.table(result))
    _say(f"results in {path} ({setup.experiment}.md has the table)")


@app.command()
def reproduce(
    out: Annotated[Path, typer.Option(help="Directory for study.json.")] = Path("runs/reproduce"),
    results: Annotated[Path, typer.Option(help="Markdown page to write.")]
    = Path("docs/RESULTS.md"),
    model: Annotated[str | None, typer.Option(
        "--model", "-m", show_default="gemma-3-270m",
        help="gemma-3-270m (embedded), a local HF dir or .gguf")] = None,
    dtype: Annotated[str | None, typer.Option(show_default="auto", help=DTYPE_HELP)] = None,
    steps: Annotated[int | None, typer.Option(min=1, show_default="12",
                                              help="Integration steps.")] = None,
    max_queries: Annotated[int | None, typer.Option(
        min=1, show_default="4", help="Queries attributed per fact and language (the "
                                       "measurements use all of them).")] = None,
    rule: Annotated[str | None, typer.Option(
        show_default="left", help="Quadrature of the IG integral: left, trapezoid or "
                                  "gauss-legendre.")] = None,
    limit: Annotated[int | None, typer.Option(min=2, show_default="the whole study",
                                              help="Smoke run: N facts per data part, "
                                                          "2 per relation.")] = None,
    seed: Annotated[int | None, typer.Option(
        show_default="0", help="Sampling, splits, counterfactuals, bootstrap.")] = None,
    known: Annotated[str | None, typer.Option(
        show_default="auto", help="Knowledge filter: auto, rank, greedy, either or any.")]
    = None,
    generic: Annotated[str | None, typer.Option(
        show_default="auto", help="auto (leave generic neurons out) or keep.")] = None,
    relation_neurons: Annotated[str | None, typer.Option(
        "--relation-neurons", show_default="auto",
        help="auto (leave the relation neurons of a fact's relation out: its fact set) or "
             "keep.")] = None,
    methods: Annotated[str | None, typer.Option(
        show_default="ig,amig,matrice",
        help=f"Methods located on every part: {', '.join(_methods())} or matrice.")] = None,
    experiment_method: Annotated[str | None, typer.Option(
        show_default="amig", help="The method whose neurons the experiments use (one of "
                                  "--methods).")] = None,
    study_config: Annotated[Path | None, typer.Option(
        "--config", show_default="none: the built-in study",
        help="YAML of the study's settings and data parts (any registered experiment); flags "
             "override it.")] = None,
    pilot: Annotated[Path | None, typer.Option(
        show_default="none: the parts' own sample sizes",
        help="A previous study.json: each part it ran is sized so that every claim it measured "
             "reaches --power (at most the config's max_per_relation facts per relation).")]
    = None,
    power: Annotated[float | None, typer.Option(show_default="0.8", min=0.01, max=0.99,
                                                help="The power target of --pilot.")] = None,
    render: Annotated[Path | None, typer.Option(show_default="none: run the study",
                                                help="Only render RESULTS from this study.json "
                                                     "or study.json.gz (headline statistics "
                                                     "recomputed from its raw results, where it "
                                                     "has them).")]
    = None,
    beside: Annotated[list[Path] | None, typer.Option(
        show_default="none", help="Another model's study.json (repeatable): its claims are shown "
                                  "beside this one's, and What we conclude reads them all.")]
    = None,
    before: Annotated[Path | None, typer.Option(show_default="none",
                                                help="An earlier RESULTS.md: its verdicts "
                                                     "are shown beside the new ones, with the "
                                                     "reason for each change.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed study in OUT (stored "
                                              "attributions and experiments are kept).")]
    = False,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    backend: Annotated[str, typer.Option(help="local (default) or ray: attributions computed "
                                              "on Ray actors.")] = "local",
    workers: Annotated[int, typer.Option(min=1, help="Ray actors (model copies).")] = 1,
    gpus_per_worker: GpusOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The reproduction study: the papers' tables on a real model (docs/RESULTS.md)."""
    import shlex
    import sys

    from mkn.jobs.pipeline import concrete_dtype
    from mkn.jobs.study import load_study_config, run_study
    from mkn.localization.backends import make_backend
    from mkn.report.results import RESULTS_MARKER, write_results
    from mkn.runs.directory import check_ours, check_writable

    try:
        if render is None:
            config = load_study_config(
                study_config, model=model, dtype=dtype, steps=steps, rule=rule,
                max_queries=max_queries,
                limit=limit, seed=seed, known=known, generic=generic,
                relation_neurons=relation_neurons,
                methods=methods and [m.strip() for m in methods.split(",") if m.strip()],
                experiment_method=experiment_method, pilot=pilot and str(pilot), power=power)
            asked, config.dtype = config.dtype, concrete_dtype(config.dtype, device)
            check_writable(results.parent)
            check_ours(results, RESULTS_MARKER, "choose another --results, or delete that "
                       "file yourself to have mkn write it")  # before the study, not after
            lm = _load(config.model, asked, device, device_map)  # says why auto chose
            command = "mkn reproduce " + shlex.join(
                a for a in sys.argv[2:] if a != "--resume") if sys.argv[1:2] == [
                "reproduce"] else "mkn reproduce"
            with ProgressBars(quiet) as bars, make_backend(
                    backend, workers, model_spec=config.model, dtype=config.dtype, lm=lm,
                    gpus_per_worker=gpus_per_worker) as runner:
                run_study(lm, config, out, bars.task, command.strip(), resume,
                          None if backend == "local" else runner, _say)
            path = write_results(out / "study.json", results, before=before,
                                 beside=beside or ())
        else:
            path = write_results(render, results, refresh=True, before=before,
                                 beside=beside or ())
    except (ValueError, FileNotFoundError) as error:
        raise _fail(error) from error
    _say(f"study: {render or out / 'study.json'}\nresults: {path}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A directory written by mkn locate, "
                                                 "experiment, probe or demo.")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default RUN_DIR/report.html).")]
    = None,
) -> None:
    """Write one self-contained HTML report (plots, tables; works offline)."""
    from mkn.report import write_report

    try:
        path = write_report(run_dir, out)
    except (NotADirectoryError, ValueError) as error:
        raise _fail(error) from error
    _say(f"report: {path.resolve()}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A directory written by mkn locate, experiment "
                                                 "or demo.")],
    fmt: Annotated[str, typer.Option("--format", help="parquet (default) or csv.")] = "parquet",
    out: Annotated[Path | None, typer.Option(help="Directory for the tables (default "
                                                  "RUN_DIR/export).")] = None,
) -> None:
    """Tidy tables for pandas/polars: neurons (one row per fact, language and neuron, named
    blocks.{l}.mlp.hook_post), items (per fact and language) and experiment items."""
    from mkn.report.export import export_run

    try:
        paths = export_run(run_dir, out, fmt)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(error) from error
    for name, path in paths.items():
        _say(f"{name}: {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/demo"),
    model: ModelOpt = "gemma-3-270m",
    dtype: RunDtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """The main job: attribute, locate across languages, edit, report (about 5-10 min)."""
    from mkn.jobs import demo as demo_job
    from mkn.runs.directory import claim

    try:
        lm = _load(model, dtype, device)  # all checked before the disk is touched
        identity = demo_job.identity(model, str(lm.dtype).removeprefix("torch."))
        with claim(out, "demo", identity, resume=True) as directory, \
                ProgressBars() as bars:
            example, summary, editing, report, generic = demo_job.run(lm, out, model, bars.task,
                                                                      _say, directory)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise _fail(error) from error
    flagged = set(generic.neurons())
    top = ", ".join(f"({layer}, {index})" + (" generic" if (layer, index) in flagged else "")
                    for layer, index, _ in example.top(5))
    console.print(f"\n[bold]1. one fact[/]: {escape(repr(example.prompt))} -> "
                  f"{escape(repr(example.target))}, p = {example.prob:.3f}; top neurons "
                  f"(layer, index): {top}")
    counts = summary["knowledge"]["per_language"]
    console.print("[bold]2. known items[/] (located; the rest skipped): " + ", ".join(
        f"{lang} {c['located']}/{c['items']}" for lang, c in counts.items()))
    agnostic = summary["language_agnostic"]
    console.print(f"[bold]3. language-agnostic neurons[/]: {agnostic['facts_with_any']}/"
                  f"{summary['facts']} located facts, mean {agnostic['mean_neurons']:.1f} per "
                  "fact")
    console.print("[bold]4. cross-lingual editing[/] (median relative change of p(gold), "
                  "beside its controls):")
    console.print(demo_job.cross_lingual_editing.table(editing), markup=False, soft_wrap=True)
    console.print(f"\n[bold green]report:[/] {escape(str(report.resolve()))}")


def _say(text: str) -> None:
    """Print text as it is (never as console markup)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def describe_error(error: BaseException) -> str:
    """One line for an error nobody caught: what went wrong and, where known, where."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, RecursionError):
        return "input nested too deeply to read (recursion limit)"
    if isinstance(error, MemoryError):
        return "out of memory"
    text = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {text}"


def main() -> None:
    """``mkn``: every error ends in one line and exit code 2 (a traceback with ``--debug``)."""
    import sys

    logging.basicConfig(level=logging.WARNING)
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
    from typer.core import _click as click  # typer's own click (it vendors one)

    try:
        code = app(standalone_mode=False, prog_name="mkn")  # usage errors: one line, no box
    except click.exceptions.UsageError as error:
        where = error.ctx.command_path if error.ctx is not None else "mkn"
        console.print(f"[bold red]error:[/] {escape(error.format_message())} "
                      f"({escape(where)} --help lists the options)", soft_wrap=True,
                      highlight=False)
        raise SystemExit(2) from None
    except click.exceptions.ClickException as error:
        console.print(f"[bold red]error:[/] {escape(error.format_message())}", soft_wrap=True,
                      highlight=False)
        raise SystemExit(error.exit_code) from None
    except (KeyboardInterrupt, typer.Abort):  # typer's Abort (its vendored click has none)
        _say("interrupted")
        raise SystemExit(130) from None
    except Exception as error:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {escape(describe_error(error))} (mkn --debug ... "
                      "shows the traceback)", soft_wrap=True, highlight=False)
        raise SystemExit(2) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
