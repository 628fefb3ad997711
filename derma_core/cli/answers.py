"""``derma eval-answers`` (score an existing ``model_vqa.py`` answer file) and ``derma
sweep-prompts`` (one backend, one run per prompt); the work itself is in :mod:`derma_core.answers`."""

from __future__ import annotations

import hashlib
import os

import click

from ..answers import (PARSERS, AnswerFileError, answers_dataset, attach_metadata, attach_prepared,
                       evaluate_answer_files, log_answers_run, sweep_prompts)
from ..textio import encoding_option


@click.command("eval-answers")
@click.option("--questions", "-q", required=True, type=click.Path(dir_okay=False),
              help="model_vqa.py question file (JSONL with question_id, image, text, answer).")
@click.option("--answers", "-a", required=True, type=click.Path(dir_okay=False),
              help="model_vqa.py answer file (JSONL with question_id, text).")
@click.option("--parser", type=click.Choice(PARSERS), default="seed", show_default=True,
              help="seed: the original study's parser (HAM10000 only); strict: any dataset.")
@click.option("--experiment", default="answer-files", show_default=True, help="MLflow experiment.")
@click.option("--run-name", help="MLflow run name (default: the answer file's name).")
@click.option("--tracking-uri", help="MLflow tracking URI.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a core config key, e.g. -o evaluation.bootstrap=0.")
@click.option("--prepared", "prepared", type=click.Path(file_okay=False),
              help="The folder from `derma prep` the questions were written from (`derma vqa`): its label "
                   "set, and its groups and metadata columns by image id. Without it the files are "
                   "HAM10000's (the original study's).")
@click.option("--metadata", "metadata", type=click.Path(dir_okay=False),
              help="HAM10000_metadata.csv: attach lesion ids (lesion-level intervals) and sex, age, "
                   "localization, dx_type (subgroup tables) by image id.")
@encoding_option("the question and answer files")
def eval_answers_command(questions, answers, parser, experiment, run_name, tracking_uri, overrides, prepared,
                         metadata, encoding):
    """Evaluate an existing model_vqa.py answer file through derma's evaluators; log an MLflow run."""
    from .. import runner
    from ..interfaces import Dataset

    config, descriptor, prepared_dataset, ev, join = _read_answers(questions, answers, parser, overrides,
                                                                   prepared, metadata, encoding)
    _warn_about_answers(ev, join, metadata or prepared, questions, answers)
    dataset = Dataset(descriptor.name, _file_digest(questions), {ev.split.name: ev.split}, descriptor=descriptor,
                      dir=prepared_dataset.dir if prepared_dataset is not None else None)
    metrics, results = runner.evaluate(ev.split, ev.predictions, config, dataset)
    run_id = log_answers_run(ev, join, metrics, results, descriptor, questions, answers, parser, experiment,
                             run_name, tracking_uri, prepared, metadata)
    click.echo(f"{len(ev.predictions)} questions, {ev.report.n_invalid} invalid answers "
               f"({parser} parser: {ev.predictions.info['failures']})")
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "invalid_rate"):
        if key in metrics:
            click.echo(f"  {key:<20} {metrics[key]:.4f}")
    click.echo(f"MLflow run id: {run_id}  (experiment {experiment!r})")


def _read_answers(questions, answers, parser, overrides, prepared, metadata, encoding):
    """eval-answers' inputs: the core config, the dataset's descriptor and prepared folder (or
    None), the evaluated answer files, and the join of --metadata or --prepared (or None); bad
    input is one click error line."""
    from ..config import ConfigError, resolve_config

    try:
        if prepared and metadata:
            raise AnswerFileError("--prepared already holds the metadata of its images; drop --metadata")
        config = resolve_config(None, overrides=overrides)
        config["parser"] = parser
        descriptor, prepared_dataset = answers_dataset(prepared)
        ev = evaluate_answer_files(questions, answers, parser, label_set=descriptor.labels, encoding=encoding)
        join = None
        if metadata:
            ev.split, join = attach_metadata(ev.split, metadata)
        elif prepared_dataset is not None:
            ev.split, join = attach_prepared(ev.split, prepared_dataset)
    except (ConfigError, AnswerFileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    return config, descriptor, prepared_dataset, ev, join


def _warn_about_answers(ev, join, source, questions, answers) -> None:
    """On stderr: how the metadata joined, the files' problems, unanswered questions and
    answers to no question."""
    if join is not None:
        click.echo(f"metadata: {join.matched} of {len(ev.split)} images matched in {source} "
                   f"({ev.split.frame['group_id'].nunique()} groups)", err=True)
        if join.missing:
            click.echo(f"warning: {len(join.missing)} image id(s) are not in {source} (kept, each its own "
                       f"group, subgroup 'missing'): {', '.join(join.missing[:10])}"
                       f"{' ...' if len(join.missing) > 10 else ''}", err=True)
        if join.label_mismatch:
            i, t, d = join.label_mismatch[0]
            click.echo(f"warning: {len(join.label_mismatch)} image(s) have a different true label in the question "
                       f"file than in {source}, e.g. {i}: {t} vs {d} (the question file's label is used)",
                       err=True)
    for where, items in ev.problems.items():
        for line, message in items[:20]:
            place = f"{questions if where == 'questions' else answers}" + (f" line {line}" if line else "")
            click.echo(f"warning: {place}: {message}", err=True)
        if len(items) > 20:
            click.echo(f"warning: ... {len(items) - 20} more problems in the {where} file", err=True)
    if ev.missing:
        click.echo(f"warning: {len(ev.missing)} question(s) have no answer (counted invalid): "
                   f"{', '.join(ev.missing[:10])}{' ...' if len(ev.missing) > 10 else ''}", err=True)
    if ev.extra:
        click.echo(f"warning: {len(ev.extra)} answer(s) match no question (ignored): "
                   f"{', '.join(ev.extra[:10])}{' ...' if len(ev.extra) > 10 else ''}", err=True)


def _file_digest(*paths: str | os.PathLike) -> str:
    """A short sha256 of the files' bytes: the digest of the dataset they are scored as."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


@click.command("sweep-prompts")
@click.option("--plugin", "-p", "plugin", default="llava_zeroshot", show_default=True)
@click.option("--prompts", required=True, help="Comma-separated prompt names, e.g. p0,p1,p2,p4.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--metric", default="macro_f1", show_default=True,
              help="Metric plotted per prompt (with its bootstrap interval when available).")
@click.option("--experiment", help="MLflow experiment (default: the dataset name).")
@click.option("--tracking-uri", help="MLflow tracking URI.")
def sweep_prompts_command(plugin, prompts, config_file, overrides, metric, experiment, tracking_uri):
    """Run one backend once per prompt: a parent MLflow run, a child per prompt, a sensitivity figure."""
    from .. import plugins
    from ..config import ConfigError

    names = [p.strip() for p in prompts.split(",") if p.strip()]
    known = plugins.prompt_builders()
    unknown = [p for p in names if p not in known]
    if not names or unknown:
        raise click.ClickException(f"unknown prompt(s) {unknown or prompts!r}; registered: {', '.join(sorted(known))}")
    try:
        reg = plugins.get_classifier(plugin)
        result = sweep_prompts(plugin, names, config_file, overrides, metric, experiment, tracking_uri,
                               plugin_config=reg.options.get("config"))
    except (ConfigError, plugins.UnknownComponentError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    split = result["split"]
    for row in result["rows"]:
        ci = f" [{row['low']:.3f}, {row['high']:.3f}]" if row["low"] is not None else ""
        click.echo(f"  {row['prompt']:<12} {split}_{metric} {row['value']:.4f}{ci}  (run {row['run_id']})")
    click.echo(f"parent MLflow run id: {result['parent_run_id']}")
