"""The data commands: ``derma prep``, ``derma synth``, ``derma download``, ``derma vqa``."""

from __future__ import annotations

import sys

import click

from .. import hookimpl


def _fail(message: str, code: int = 1) -> None:
    for line in str(message).strip().splitlines():
        click.echo(line if line.startswith(("error", "warning", "...")) else f"error: {line}", err=True)
    sys.exit(code)


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise click.BadParameter(f"{text!r}: give three shares train,val,test such as 0.7,0.1,0.2")
    return parts  # type: ignore[return-value]


@click.command("prep")
@click.option("--raw", "raw_dir", required=True, type=click.Path(file_okay=False),
              help="Raw folder: HAM10000_metadata.csv plus HAM10000_images_part_1/ and _part_2/ (or one image folder).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Prepared folder to write.")
@click.option("--size", default=224, show_default=True, type=int, help="Image side in pixels.")
@click.option("--split", "split_mode", default="grouped", show_default=True, type=click.Choice(["seed", "grouped"]),
              help="seed: the original study's split exactly; grouped: lesion-grouped, label-stratified, "
                   "every class in every split.")
@click.option("--seed", default=42, show_default=True, type=int, help="Split seed.")
@click.option("--ratios", default="0.7,0.1,0.2", show_default=True, help="grouped: train,val,test shares.")
@click.option("--folds", type=int, default=None, help="Also write K lesion-grouped CV folds of train+val.")
@click.option("--workers", type=int, default=None, help="Resize processes (default: all cores).")
@click.option("--resize", "resize_mode", default="squash", show_default=True,
              type=click.Choice(["squash", "pad", "crop"]),
              help="squash (the original study's), pad to square with the mean colour (LLaVA), or centre crop.")
@click.option("--strict", is_flag=True, help="Treat every warning as fatal.")
@click.option("--name", default="ham10000", show_default=True, help="Dataset name recorded in the manifest (MLflow experiment).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def prep_command(raw_dir, out_dir, size, split_mode, seed, ratios, folds, workers, resize_mode, strict, name, quiet):
    """Verify, split, resize and cache a raw HAM10000 folder for `derma run --data-dir`."""
    from .prepare import PrepParams, prepare
    from .raw import PrepError

    params = PrepParams(size=size, split=split_mode, seed=seed, resize=resize_mode, ratios=_ratios(ratios),
                        folds=folds)
    try:
        prepare(raw_dir, out_dir, params, workers=workers, strict=strict, name=name, progress=not quiet,
                log=lambda m: click.echo(m, err=True))
    except PrepError as exc:
        _fail(str(exc))


@click.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--n", "n", default=1500, show_default=True, type=int, help="Number of images.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", type=int, default=None, help="Drawing processes.")
@click.option("--quiet", "-q", is_flag=True)
def synth_command(out_dir, n, seed, workers, quiet):
    """Draw a SYNTHETIC set in HAM10000's raw layout (600x450 JPEGs, 7 metadata columns)."""
    from pathlib import Path

    from .synthetic import generate

    if (Path(out_dir) / "HAM10000_metadata.csv").exists():
        _fail(f"{out_dir} already holds a dataset; choose an empty --out")
    try:
        generate(out_dir, n=n, seed=seed, workers=workers, progress=not quiet)
    except ValueError as exc:
        _fail(str(exc))
    click.echo(f"wrote {n} synthetic images (seed {seed}) to {out_dir}; next: derma prep --raw {out_dir} --out DIR",
               err=True)


@click.command("download")
@click.argument("dataset", type=click.Choice(["ham10000"]))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Raw folder to fill.")
@click.option("--server", default=None, help="Dataverse server (default: https://dataverse.harvard.edu or $DERMA_DATAVERSE_URL).")
@click.option("--retries", default=5, show_default=True, type=int, help="Resume attempts per file.")
@click.option("--delete-archives", is_flag=True, help="Remove the zip files after unpacking.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or progress messages (errors still print).")
def download_command(dataset, out_dir, server, retries, delete_archives, quiet):
    """Download a public dataset (HAM10000 from Harvard Dataverse) into its raw layout."""
    from .download import DownloadError, download_ham10000

    try:
        download_ham10000(out_dir, server=server, retries=retries, progress=not quiet,
                          keep_archives=not delete_archives,
                          log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)))
    except DownloadError as exc:
        _fail(str(exc))


@click.command("vqa")
@click.option("--prepared", required=True, type=click.Path(file_okay=False, exists=True), help="Folder from `derma prep`.")
@click.option("--prompt", "prompt_name", default="p1", show_default=True, help="Prompt name (p0, p1, p2, p4, p1_perm0...).")
@click.option("--format", "fmt", default="model_vqa", show_default=True, type=click.Choice(["model_vqa", "llava"]),
              help="model_vqa: question .jsonl for LLaVA-Med's model_vqa.py; llava: training conversation JSON.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test", "all"]))
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Output file (default: PREPARED/vqa/...).")
def vqa_command(prepared, prompt_name, fmt, split, out_file):
    """Write VQA question files in the original study's formats."""
    from ..plugins import UnknownComponentError
    from .vqa import export_vqa

    try:
        path = export_vqa(prepared, prompt_name, split, fmt, out_file)
    except (UnknownComponentError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc).strip("'\""))
    click.echo(str(path))


@hookimpl
def register_commands(cli):
    cli.add_command(prep_command)
    cli.add_command(synth_command)
    cli.add_command(download_command)
    cli.add_command(vqa_command)
