"""Issue 23: one method contract and one experiment contract.

A method is one file that registers a :class:`mkn.attribution.methods.Method`; an experiment is
one file with ``run``, ``table`` and ``PHASES``, registered once. Both are exercised here the way
a user adds theirs: a toy method and a toy experiment defined in this file, run through the CLI.
"""

from __future__ import annotations

import json
import statistics
import types

import pytest
import torch
from typer.testing import CliRunner

import mkn
from mkn.attribution.methods import Method, StepScores, get_method, method_names, register_method
from mkn.attribution.methods import registry as method_registry
from mkn.attribution.queries import encode
from mkn.cli import app
from mkn.experiments import EXPERIMENTS, register_experiment
from mkn.models.hooks import neuron_hooks
from tests import tiny_models as tm

runner = CliRunner()
PROMPT = "The capital of France is"


@pytest.fixture(autouse=True)
def _one_thread():
    with tm.torch_threads(1):
        yield


def hand_grad_x_act(lm, prompt: str, target: str) -> torch.Tensor:
    """a * dp(target)/da at the clean neurons of each layer, one layer at a time, by autograd
    on a plain forward pass (mean over the target's teacher-forced tokens)."""
    total = torch.zeros(lm.n_layers, lm.n_neurons)
    query = encode(lm, prompt, target)
    for step in query.steps:
        ids = torch.tensor([step.input_ids])
        for layer in range(lm.n_layers):
            kept = {}

            def swap(x, kept=kept, position=step.position):
                leaf = x[:, position].detach().clone().requires_grad_(True)
                kept["leaf"] = leaf
                out = x.clone()
                out[:, position] = leaf
                return out

            with torch.enable_grad(), neuron_hooks(lm, {layer: swap}):
                logits = lm.model(input_ids=ids).logits[0, step.position]
                prob = torch.softmax(logits.float(), -1)[step.target_id]
                (grad,) = torch.autograd.grad(prob, kept["leaf"])
            total[layer] += (kept["leaf"].detach() * grad)[0].float()
    return total / len(query.steps)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_grad_x_act_is_activation_times_gradient(family):
    lm = tm.tiny(family)
    prompt = PROMPT if lm.causal else PROMPT + " [Y] ."
    for target in ("Paris", "New York"):
        result = mkn.attribute(lm, prompt, target, method="grad-x-act")
        expected = hand_grad_x_act(lm, prompt, target)
        assert expected.abs().max() > 0
        torch.testing.assert_close(result.scores, expected, rtol=1e-4,
                                   atol=1e-5 * float(expected.abs().max()))
        assert torch.isnan(result.completeness_gap).all()
        assert result.to_dict()["relative_completeness_gap"] is None
        assert result.to_dict()["weighted_completeness_gap"] is None


def test_the_registry_names_and_refuses_in_one_line():
    assert method_names()[:3] == ("ig", "amig", "grad-x-act")
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of ig, amig"):
        get_method("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("ig", "again", get_method("ig").score_step))
    with pytest.raises(ValueError, match="aggregator"):
        register_method(Method("matrice", "x", get_method("ig").score_step))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        mkn.attribute(tm.tiny("llama"), PROMPT, "Paris", method="nope")


# -- a toy method, as a user's file would define it -------------------------------------------

def toy_score_step(lm, step, clean, layers, settings) -> StepScores:
    """|activation|: the neurons that fire most (a sanity method, no gradient)."""
    scores = torch.zeros(lm.n_layers, lm.n_neurons)
    scores[layers] = clean.activations[layers].float().abs().cpu()
    return StepScores(scores)


TOY = Method("toy-magnitude", "|a|, the clean activation's magnitude (a toy)", toy_score_step)


# -- a toy experiment, as a user's file would define it ---------------------------------------

def toy_run(lm, facts, languages, config, seed=0, progress=None, cache=None, known=None,
            generic=None, top=3):
    """Per known item: its ``top`` neurons by ``config.method`` and p(gold) with them
    suppressed."""
    from mkn.interventions.activation import suppress
    from mkn.localization.knowledge import known_items

    known = known or known_items(lm, facts, languages, config.known)
    items = []
    for fact in facts:
        for lang in known.languages_of(fact.id):
            prompt = fact.prompts(lang)[0]
            target = fact.languages[lang].object
            result = mkn.attribute(lm, prompt, target, method=config.method, steps=config.steps)
            neurons = [(layer, index) for layer, index, _ in result.top(top)]
            with suppress(lm, neurons):
                after = mkn.probability(lm, prompt, target)
            items.append({"fact_id": fact.id, "language": lang, "before": result.prob,
                          "after": after, "neurons": [list(n) for n in neurons]})
        if progress:
            progress(fact.id)
    return {"items": items, "summary": {"median_after": statistics.median(
        i["after"] for i in items) if items else None}}


def toy_table(result) -> str:
    return f"| items | median p after |\n|---|---|\n| {len(result['items'])} | " \
           f"{result['summary']['median_after']} |"


TOY_EXPERIMENT = types.SimpleNamespace(run=toy_run, table=toy_table, PHASES=1)


@pytest.fixture
def toys():
    register_method(TOY)
    register_experiment("toy-suppression", TOY_EXPERIMENT)
    yield
    method_registry._METHODS.pop(TOY.name, None)
    EXPERIMENTS.pop("toy-suppression", None)


def test_a_method_and_an_experiment_each_in_one_file_run_through_the_cli(toys, tiny_dir,
                                                                        tmp_path):
    model, data = str(tiny_dir / "model"), f"jsonl:{tiny_dir / 'facts.jsonl'}"
    attributed = runner.invoke(app, ["attribute", "--model", model, "--prompt", PROMPT,
                                     "--target", "Paris", "--method", TOY.name, "--json"])
    assert attributed.exit_code == 0, attributed.output
    payload = json.loads(attributed.output.strip().splitlines()[-1])
    assert payload["method"] == TOY.name and payload["relative_completeness_gap"] is None
    out = tmp_path / "locate"
    located = runner.invoke(app, ["locate", "--model", model, "--data", data, "--languages",
                                  "en", "--limit", "2", "--method", TOY.name, "--generic",
                                  "keep", "--out", str(out), "--quiet"])
    assert located.exit_code == 0, located.output
    records = [json.loads(line) for line in (out / "neurons.jsonl").read_text().splitlines()]
    assert records and all(r["neurons"] for r in records)
    assert json.loads((out / "config.json").read_text())["locate"]["method"] == TOY.name
    experiment = tmp_path / "toy"
    ran = runner.invoke(app, ["experiment", "toy-suppression", "--model", model, "--data", data,
                              "--languages", "en", "--limit", "2", "--method", TOY.name,
                              "--set", "top=2", "--generic", "keep", "--out", str(experiment),
                              "--quiet"])
    assert ran.exit_code == 0, ran.output
    saved = json.loads((experiment / "toy-suppression.json").read_text())
    assert saved["setup"]["options"] == {"top": 2} and saved["setup"]["method"] == TOY.name
    assert all(len(i["neurons"]) == 2 for i in saved["result"]["items"])
    bad = runner.invoke(app, ["experiment", "toy-suppression", "--model", model, "--data", data,
                              "--set", "top=x", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "option top='x'" in bad.output


def test_the_study_takes_a_registered_method_and_experiment(toys, tiny_dir, tmp_path):
    """``mkn reproduce --config`` runs any registered experiment on any data, with any
    registered method located and compared (localization-quality takes the study's methods),
    and renders RESULTS.md from it."""
    import yaml

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"parts": [{
        "name": "tiny", "data": f"jsonl:{tiny_dir / 'facts.jsonl'}", "languages": ["en", "zh"],
        "relations": ["P36"], "per_relation": 5,
        "experiments": ["toy-suppression", "localization-quality"],
        "options": {"toy-suppression": {"top": 2}}, "chosen": "the tiny capitals"}]}))
    out, page = tmp_path / "study", tmp_path / "RESULTS.md"
    ran = runner.invoke(app, ["reproduce", "--config", str(config), "--model",
                              str(tiny_dir / "model"), "--methods", f"{TOY.name},amig",
                              "--steps", "2", "--max-queries", "1", "--generic", "keep",
                              "--out", str(out), "--results", str(page), "--quiet"])
    assert ran.exit_code == 0, ran.output
    study = json.loads((out / "study.json").read_text())
    assert study["config"]["methods"] == [TOY.name, "amig"]
    assert study["config"]["experiment_method"] == "amig"
    part = study["parts"][0]
    assert set(part["localization"]) == {TOY.name, "amig"}
    toy = part["experiments"]["toy-suppression"]["result"]
    assert toy["items"] and all(len(i["neurons"]) == 2 for i in toy["items"])
    compared = part["experiments"]["localization-quality"]["result"]
    assert TOY.name in json.dumps(compared)
    text = page.read_text()
    assert TOY.name in text and "## Experiment: toy-suppression" in text
    assert toy_table(toy) in text  # its own table, from the registry
    wrong = runner.invoke(app, ["reproduce", "--config", str(config), "--methods", "nope",
                                "--out", str(tmp_path / "x"), "--results", str(tmp_path / "x.md")])
    assert wrong.exit_code == 2 and "methods must be distinct names of" in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1


def test_every_registered_experiment_has_a_report_view_and_cli_choice():
    from mkn.cli import EXPERIMENT_NAMES
    from mkn.report.experiment_views import EXPERIMENT_VIEWS

    assert set(EXPERIMENTS) == set(EXPERIMENT_VIEWS) == set(EXPERIMENT_NAMES)


def hand_patching(lm, prompt: str, target: str) -> torch.Tensor:
    """p(target) - p(target with one neuron at the prediction position set to its corrupted
    value), one plain forward pass per neuron."""
    from mkn.attribution.methods.patching import corrupted_neurons

    step = encode(lm, prompt, target).steps[0]
    corrupted = corrupted_neurons(lm, step)
    ids = torch.tensor([step.input_ids])

    def prob(hooks) -> float:
        with torch.no_grad(), neuron_hooks(lm, hooks):
            logits = lm.model(input_ids=ids).logits[0, step.position]
        return float(torch.softmax(logits.float(), -1)[step.target_id])

    clean = prob({})
    out = torch.zeros(lm.n_layers, lm.n_neurons)
    for layer in range(lm.n_layers):
        for index in range(lm.n_neurons):
            def patch(x, layer=layer, index=index):
                x = x.clone()
                x[:, step.position, index] = corrupted[layer, index]
                return x

            out[layer, index] = clean - prob({layer: patch})
    return out


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_patching_is_exact_single_neuron_patching(family):
    """The tiny models have 2 x 64 neurons, all within the 256 candidates: every score is the
    exact patched drop, computed here one plain forward pass per neuron."""
    lm = tm.tiny(family)
    prompt = PROMPT if lm.causal else PROMPT + " [Y] ."
    result = mkn.attribute(lm, prompt, "Paris", method="patching")
    expected = hand_patching(lm, prompt, "Paris")
    assert expected.abs().max() > 0
    torch.testing.assert_close(result.scores, expected, rtol=1e-3,
                               atol=1e-4 * float(expected.abs().max()))


def test_patching_finds_a_planted_neuron():
    """Only neuron (1, 7) writes to the residual stream (every other output column of every
    MLP is zero) and it writes the target's unembedding: patching any other neuron changes
    nothing, patching it moves p(Paris)."""
    lm = tm.build("llama", cached=False)
    paris = lm.tokenizer.convert_tokens_to_ids("Paris")
    with torch.no_grad():
        direction = lm.model.lm_head.weight[paris]
        for layer in range(lm.n_layers):
            lm.down_proj(layer).weight.zero_()
        lm.down_proj(1).weight[:, 7] = 3.0 * direction / direction.norm()
    result = mkn.attribute(lm, PROMPT, "Paris", method="patching")
    layer, index, _ = max(((layer, index, abs(float(result.scores[layer, index])))
                           for layer in range(lm.n_layers) for index in range(lm.n_neurons)),
                          key=lambda t: t[2])
    assert (layer, index) == (1, 7)
    others = result.scores.clone()
    others[1, 7] = 0
    assert others.abs().max() < 1e-6 * abs(float(result.scores[1, 7]))


def test_rankings_name_any_registered_method_even_with_dashes():
    from mkn.experiments.common import methods_of, parse_ranking
    from mkn.experiments.shared_sets import run as shared_sets_run

    assert parse_ranking("grad-x-act") == ("grad-x-act", "")
    assert parse_ranking("grad-x-act-source") == ("grad-x-act", "source")
    assert parse_ranking("matrice-lambda0") == ("matrice", "lambda0")
    with pytest.raises(ValueError, match="unknown ranking 'amig-lambda0'"):
        parse_ranking("amig-lambda0")
    assert methods_of(shared_sets_run, {"rankings": ["grad-x-act-source", "patching", "amig"]}
                      ) == ("grad-x-act", "patching", "amig")
