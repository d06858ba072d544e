"""Command line: ``mkn attribute | demo``."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="mkn: multilingual knowledge neurons.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_show_locals=False)
console = Console()

ModelOpt = Annotated[str, typer.Option("--model", "-m",
                                       help="gemma-3-270m (embedded), a local HF dir or .gguf")]
MethodOpt = Annotated[str, typer.Option(help="Attribution method: ig (zero baseline) or amig.")]
StepsOpt = Annotated[int, typer.Option(min=1, help="Integration steps per layer.")]
RuleOpt = Annotated[str, typer.Option(help="Quadrature rule: left, trapezoid, gauss-legendre.")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16.")]


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {error}")
    return typer.Exit(code=2)


def _load(model: str, dtype: str):
    import mkn

    with console.status(f"loading {model} (the first load converts the GGUF, ~1 min)"):
        return mkn.load_model(model, dtype=dtype)


@app.command()
def attribute(
    prompt: Annotated[str, typer.Option(help="Text with [Y] for the object, or the object "
                                             "implied at the end.")],
    target: Annotated[str, typer.Option(help="The object, e.g. Paris.")],
    model: ModelOpt = "gemma-3-270m",
    method: MethodOpt = "ig",
    steps: StepsOpt = 20,
    rule: RuleOpt = "left",
    top: Annotated[int, typer.Option(min=1, help="How many top neurons to show.")] = 10,
    dtype: DtypeOpt = "float32",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Attribute p(target | prompt) to FFN neurons and show the top ones."""
    import mkn

    try:
        lm = _load(model, dtype)
        result = mkn.attribute(lm, prompt=prompt, target=target, method=method, steps=steps,
                               rule=rule)
    except (ValueError, IndexError, TypeError) as error:
        raise _fail(error) from error
    if as_json:
        payload = {"model": model, **result.to_dict(top=top)}
        typer.echo(json.dumps(payload, ensure_ascii=False))
        return
    console.print(f"[bold]{model}[/] {prompt!r} -> {target!r} (tokens {result.target_tokens})")
    console.print(f"p(target) = {result.prob:.4g}   method {method}, {steps} steps, rule {rule}")
    table = Table("rank", "layer", "neuron", "score", title=f"top {top} neurons")
    for rank, (layer, index, score) in enumerate(result.top(top), 1):
        table.add_row(str(rank), str(layer), str(index), f"{score:.4g}")
    console.print(table)
    console.print(f"completeness gap: max relative {result.relative_completeness_gap:.3g} "
                  "(|sum of a layer's scores - (p(x) - p(baseline))| / |p(x) - p(baseline)|)")


@app.command()
def demo(
    model: ModelOpt = "gemma-3-270m",
    method: MethodOpt = "amig",
) -> None:
    """Attribute a few well-known facts in several languages on the default model."""
    import mkn

    facts = [
        ("The capital of France is", "Paris"),
        ("La capitale de la France est", "Paris"),
        ("Die Hauptstadt von Frankreich ist", "Paris"),
        ("法国的首都是", "巴黎"),
    ]
    lm = _load(model, "float32")
    table = Table("prompt", "target", "p(target)", "top neurons (layer, index)")
    for prompt, target in facts:
        with console.status(f"attributing {prompt!r}"):
            result = mkn.attribute(lm, prompt=prompt, target=target, method=method)
        top = ", ".join(f"({layer}, {index})" for layer, index, _ in result.top(5))
        table.add_row(prompt, target, f"{result.prob:.3f}", top)
    console.print(table)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":
    main()
