"""The data commands: ``derma prep``, ``derma synth``, ``derma download``, ``derma datasets``,
``derma vqa`` and ``derma overlap``; what they do lives in :mod:`derma_core.data`."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import click

from . import fail
from ..data.overlap import PHASH_SIZE, PIXEL_THRESHOLD
from ..textio import encoding_option


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise click.BadParameter(f"{text!r}: give three shares train,val,test such as 0.7,0.1,0.2")
    return parts  # type: ignore[return-value]


def _options(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r}: use KEY=VALUE, e.g. --option label=9", param_hint="--option")
        out[key.strip()] = value.strip()
    return out


def _descriptor(dataset: str | None, spec: str | None, raw: str | None = None):
    """The descriptor a command works on: ``--spec`` (a YAML-declared dataset), else the
    registered ``--dataset``; exits with one line when neither resolves."""
    from ..data.datasets import folder
    from ..data.prepare import resolve_dataset
    from ..data.raw import PrepError

    try:
        if spec:
            if dataset not in (None, "folder"):
                fail(f"--spec declares the dataset; drop --dataset {dataset}")
            return folder.descriptor_from_spec(folder.load_spec(spec), Path(raw) if raw else None)
        if dataset == "folder":
            fail("--dataset folder needs --spec FILE: the YAML file that declares your dataset (see docs/data.md)")
        return resolve_dataset(dataset or "ham10000")
    except (PrepError, folder.SpecError) as exc:
        fail(str(exc))


OPTION_HELP = "A dataset option KEY=VALUE (repeatable); `derma datasets` lists each dataset's options."


@click.command("prep")
@click.option("--dataset", default=None,
              help="Dataset the raw folder holds (default ham10000); `derma datasets` lists them.")
@click.option("--spec", type=click.Path(dir_okay=False), default=None,
              help="Your own dataset: the YAML file that declares it (labels, columns; see docs/data.md).")
@click.option("--raw", "raw_dir", required=True, type=click.Path(file_okay=False),
              help="Raw folder in the dataset's layout (HAM10000: HAM10000_metadata.csv and the image folders).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Prepared folder to write.")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE", help=OPTION_HELP)
@click.option("--size", default=224, show_default=True, type=int, help="Image side in pixels.")
@click.option("--split", "split_mode", default=None, type=click.Choice(["seed", "grouped", "official"]),
              help="grouped (default): group-level (lesion/patient), label-stratified, every class in every split; "
                   "official: the dataset's own split (the default where it has one); seed: the original HAM10000 "
                   "study's split exactly (HAM10000's classes only).")
@click.option("--seed", default=42, show_default=True, type=int, help="Split seed.")
@click.option("--ratios", default="0.7,0.1,0.2", show_default=True,
              help="grouped: train,val,test shares (official: val's share against train where it has no val).")
@click.option("--folds", type=int, default=None, help="Also write K group-level CV folds of train+val.")
@click.option("--workers", type=int, default=None, help="Resize processes (default: all cores).")
@click.option("--resize", "resize_mode", default="squash", show_default=True,
              type=click.Choice(["squash", "pad", "crop"]),
              help="squash (the original study's), pad to square with the mean colour (LLaVA), or centre crop.")
@click.option("--min-side", default=16, show_default=True, type=int,
              help="Refuse images with a side shorter than this many pixels (each is named in the prep report).")
@click.option("--strict", is_flag=True, help="Treat every warning as fatal.")
@click.option("--verify", is_flag=True,
              help="Check every chunk of an up-to-date cache against its recorded digests (not a sample); "
                   "damaged rows are resized again.")
@click.option("--name", default=None, help="Name recorded in the manifest (the MLflow experiment); default: the dataset's.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@encoding_option("the metadata table")
def prep_command(dataset, spec, raw_dir, out_dir, option_pairs, size, split_mode, seed, ratios, folds, workers,
                 resize_mode, min_side, strict, verify, name, quiet, encoding):
    """Verify, split, resize and cache a raw dataset folder for `derma run --data-dir`."""
    from ..data.prepare import PrepParams, prepare
    from ..data.raw import PrepError, table_encoding

    descriptor = _descriptor(dataset, spec, raw_dir)
    params = PrepParams(size=size, split=split_mode, seed=seed, resize=resize_mode, ratios=_ratios(ratios),
                        folds=folds, min_side=min_side)
    try:
        with table_encoding(encoding):
            prepare(raw_dir, out_dir, params, workers=workers, strict=strict, name=name, progress=not quiet,
                    log=lambda m: click.echo(m, err=True), dataset=descriptor, options=_options(option_pairs),
                    verify=verify)
    except PrepError as exc:
        fail(str(exc))


@click.command("synth")
@click.option("--like", "like", default=None, help="Dataset whose raw layout to imitate (default ham10000).")
@click.option("--spec", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Imitate your own dataset, declared in this YAML file (it must declare its labels).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE", help=OPTION_HELP)
@click.option("--n", "n", default=1500, show_default=True, type=int, help="Number of images.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", type=int, default=None, help="Drawing processes.")
@click.option("--quiet", "-q", is_flag=True)
def synth_command(like, spec, out_dir, option_pairs, n, seed, workers, quiet):
    """Draw a SYNTHETIC set in a dataset's raw layout (default: HAM10000's)."""
    from ..data.datasets.folder import SpecError
    from ..data.synthetic import generate

    descriptor = _descriptor(like, spec)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"{out_dir} already holds files; choose an empty --out")
    try:
        generate(out, n=n, seed=seed, workers=workers, progress=not quiet, dataset=descriptor,
                 options=_options(option_pairs))
    except (ValueError, SpecError) as exc:
        fail(str(exc))
    how = f"--spec {spec}" if spec else f"--dataset {descriptor.name}"
    click.echo(f"wrote {n} synthetic images (seed {seed}) in {descriptor.title}'s layout to {out_dir}; next: "
               f"derma prep {how} --raw {out_dir} --out DIR", err=True)


@click.command("download")
@click.argument("dataset")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Raw folder to fill.")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE", help=OPTION_HELP)
@click.option("--server", default=None,
              help="HAM10000: Dataverse server (default: https://dataverse.harvard.edu or $DERMA_DATAVERSE_URL).")
@click.option("--retries", default=None, type=int, help="Resume attempts per file (default 5).")
@click.option("--delete-archives", is_flag=True, help="Remove the archives after unpacking.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or progress messages (errors still print).")
def download_command(dataset, out_dir, option_pairs, server, retries, delete_archives, quiet):
    """Download a public dataset into its raw layout (`derma datasets` says which can be);
    for the others, say where to get them and the layout `derma prep` expects."""
    from ..data.download import DownloadError

    descriptor = _descriptor(dataset, None)
    if descriptor.downloader is None:
        click.echo(access_line(descriptor), err=True)
        sys.exit(2)
    try:
        options = descriptor.resolve_options(_options(option_pairs))
    except ValueError as exc:
        fail(str(exc))
    extra = {"log": (lambda m: None) if quiet else (lambda m: click.echo(m, err=True)), "server": server,
             "retries": retries, "keep_archives": False if delete_archives else None}
    given = {"--server": server is not None, "--retries": retries is not None,
             "--delete-archives": delete_archives}
    accepted = inspect.signature(descriptor.downloader).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    for flag, key in (("--server", "server"), ("--retries", "retries"), ("--delete-archives", "keep_archives")):
        if given[flag] and not (takes_any or key in accepted):
            fail(f"{flag} does not apply to dataset {descriptor.name}")
    kwargs = {k: v for k, v in extra.items() if v is not None and (takes_any or k in accepted)}
    try:
        descriptor.downloader(Path(out_dir), options, not quiet, **kwargs)
    except DownloadError as exc:
        fail(str(exc))


def access_line(descriptor) -> str:
    """One line for a dataset derma cannot download: where to get it, the layout prep expects."""
    where = descriptor.access or (f"get it from {descriptor.url}" if descriptor.url else "no download source known")
    layout = f"; `derma prep --dataset {descriptor.name}` expects: {descriptor.layout}" if descriptor.layout else ""
    return f"{descriptor.name}: derma cannot download it: {where}{layout}"


def dataset_rows() -> list[dict]:
    """Every registered dataset's facts, for `derma datasets`."""
    from .. import plugins
    from ..data.descriptor import DatasetDescriptor

    rows = []
    for name, registration in sorted(plugins.datasets().items()):
        d = registration.obj
        if not isinstance(d, DatasetDescriptor):
            rows.append({"name": name, "title": "", "plugin": registration.plugin, "classes": None, "codes": None,
                         "grouping": None, "modality": None, "split_policy": None, "licence": "",
                         "downloadable": False, "synthetic": False, "options": [],
                         "note": "a dataset source without a descriptor (its facts come with its data)"})
            continue
        try:
            codes = list(d.label_set().codes)
        except ValueError:  # labels declared elsewhere (folder: in its YAML spec)
            codes = None
        rows.append({"name": name, "title": d.title, "plugin": registration.plugin,
                     "classes": len(codes) if codes is not None else None, "codes": codes, "grouping": d.grouping,
                     "modality": d.modality, "split_policy": d.split_policy, "licence": d.licence,
                     "downloadable": d.downloader is not None, "synthetic": d.synth_writer is not None,
                     "options": [{"name": o.name, "default": o.default, "choices": list(o.choices), "help": o.help}
                                 for o in d.options],
                     "note": "" if d.downloader is not None else d.access})
    return rows


def _codes_cell(codes: list[str] | None, limit: int = 7) -> str:
    if codes is None:
        return "from its spec"
    shown = " ".join(codes[:limit]) + (" ..." if len(codes) > limit else "")
    return f"{len(codes)}: {shown}"


@click.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every class code).")
def datasets_command(as_json):
    """List the registered datasets: classes, grouping, modality, split, licence, download."""
    rows = dataset_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "classes", "grouping", "modality", "split", "download", "licence")
    table = [header]
    for r in rows:
        known = r["codes"] is not None  # folder: its facts come from each spec
        licence = r["licence"] or "-"
        table.append((r["name"], _codes_cell(r["codes"]) if r["modality"] else "-",
                      (r["grouping"] or "none") if known else "-", r["modality"] if known else "-",
                      r["split_policy"] if known else "-", "yes" if r["downloadable"] else "no",
                      licence if len(licence) <= 60 else licence[:57] + "..."))
    widths = [max(len(str(row[k])) for row in table) for k in range(len(header))]
    for row in table:
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    with_options = [r for r in rows if r["options"]]
    for r in with_options:
        opts = "; ".join(f"{o['name']}={'|'.join(o['choices'])} (default {o['default']})" for o in r["options"])
        click.echo(f"{r['name']} options: {opts}")


@click.command("vqa")
@click.option("--prepared", required=True, type=click.Path(file_okay=False, exists=True), help="Folder from `derma prep`.")
@click.option("--prompt", "prompt_name", default="p1", show_default=True, help="Prompt name (p0, p1, p2, p4, p1_perm0...).")
@click.option("--format", "fmt", default="model_vqa", show_default=True, type=click.Choice(["model_vqa", "llava"]),
              help="model_vqa: question .jsonl for LLaVA-Med's model_vqa.py; llava: training conversation JSON.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test", "all"]))
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Output file (default: PREPARED/vqa/...).")
def vqa_command(prepared, prompt_name, fmt, split, out_file):
    """Write VQA question files in the original study's formats."""
    from ..data.vqa import export_vqa
    from ..plugins import UnknownComponentError

    try:
        path = export_vqa(prepared, prompt_name, split, fmt, out_file)
    except (UnknownComponentError, ValueError, FileNotFoundError) as exc:
        fail(str(exc).strip("'\""))
    click.echo(str(path))


@click.command("overlap")
@click.argument("a_spec", metavar="A=DIR")
@click.argument("b_spec", metavar="B=DIR")
@click.option("--a-splits", default="train,val", show_default=True,
              help="A's splits compared (the training data; 'all' for every split).")
@click.option("--b-splits", default="all", show_default=True, help="B's splits compared (e.g. test).")
@click.option("--threshold", type=click.IntRange(0, PHASH_SIZE * PHASH_SIZE), default=PIXEL_THRESHOLD,
              show_default=True, help="Most pHash bits two copies of one picture differ in.")
@click.option("--duplicates", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="A published duplicate list (two image columns), e.g. ISIC_2020_Training_Duplicates.csv.")
@click.option("--json", "as_json", is_flag=True, help='{"id": n, "bytes": n, "pixels": n, "listed": n, '
                                                     '"total": n, "pairs": [...]}')
def overlap_command(a_spec, b_spec, a_splits, b_splits, threshold, duplicates, as_json):
    """Images of prepared folder B that duplicate A's training images (by id, bytes, pixels and
    published lists): counts per kind and the distinct total."""
    from ..data.overlap import find_overlap, prepared_side

    (a_name, a_dir), (b_name, b_dir) = _side_arg(a_spec), _side_arg(b_spec)
    try:
        a = prepared_side(a_dir, [s.strip() for s in a_splits.split(",")], duplicates=duplicates,
                          progress=not as_json)
        b = prepared_side(b_dir, [s.strip() for s in b_splits.split(",")], progress=not as_json)
    except (FileNotFoundError, ValueError) as exc:
        click.echo(f"error: {str(exc).strip()}", err=True)
        sys.exit(1)
    a.label, b.label = a_name, b_name
    result = find_overlap(a, b, threshold)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        click.echo("\n".join(result.lines()))


def _side_arg(text: str) -> tuple[str, str]:
    """``NAME=DIR`` -> (NAME, DIR); a bare DIR is named after its folder."""
    if "=" not in text:
        return Path(text).name, text
    name, folder = text.split("=", 1)
    return name, folder
