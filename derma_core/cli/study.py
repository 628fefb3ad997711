"""``derma study``: the command's options; the study it runs is :func:`derma_core.study.session.run_study`."""

from __future__ import annotations

import click


@click.command("study")
@click.argument("study_file")
@click.option("--dry-run", is_flag=True, help="Print the cells and which are done; run nothing.")
@click.option("--rerun", is_flag=True, help="Run the selected cells even when a FINISHED run of them exists.")
@click.option("--only", multiple=True, metavar="GLOB", help="Only cells whose name matches (repeatable), e.g. 'resnet18-*'.")
@click.option("--shard", metavar="I/N", help="Run the cells at positions I, I+N, I+2N, ... (0 <= I < N) that are missing: "
                                            "N processes with I = 0..N-1 run the whole study once between them.")
@click.option("--data-dir", "data_dirs", multiple=True, metavar="NAME=DIR",
              help="The prepared folder of the study's dataset NAME on this machine (repeatable).")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="A config value for every cell whose backend has the key, as the file's base (repeatable).")
@click.option("--experiment", help="MLflow experiment (default: the file's `experiment`, else the study name).")
@click.option("--tracking-uri", help="MLflow store; one `mlflow server` for every machine of a sharded study.")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps, for every cell (a machine setting: not part of a "
                               "cell's identity).")
@click.option("--report-out", type=click.Path(dir_okay=False),
              help="The HTML report (default: the file's report.out, else reports/STUDY.html); Markdown twin beside it.")
@click.option("--no-report", is_flag=True, help="Write no report at the end.")
@click.option("--report-only", is_flag=True, help="Run nothing; write the report of the cells done so far.")
@click.option("--quiet", "-q", is_flag=True, help="No line per cell.")
@click.option("--verbose", "-v", is_flag=True, help="Show each cell's own progress output.")
def study_command(**options):
    """Run a study: a grid of runs from a YAML file, one MLflow parent run with a child run per
    cell, then one report (results with intervals, paired tests against the baseline, the
    spread across seeds). STUDY_FILE is a path, or the name of a shipped study (smoke,
    vqa-vlm-derma, generalisation).

    A cell already FINISHED in the store with the same resolved config, code version and data
    digest is not run again, so running the command again after an interruption runs only what
    is missing. See docs/study.md.
    """
    from ..study.session import run_study

    run_study(**options)
