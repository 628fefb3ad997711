"""``derma llava ...`` commands: ``convert`` (original LLaVA-Med checkpoint -> HF folder)."""

from __future__ import annotations

import click


@click.group("llava")
def llava_group():
    """LLaVA-Med utilities (checkpoint conversion)."""


@llava_group.command("convert")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--vision-tower", help="CLIP folder or hub id to use instead of the checkpoint's mm_vision_tower.")
@click.option("--vision-source", type=click.Choice(["auto", "named", "checkpoint"]), default="auto",
              show_default=True,
              help="Vision weights: from the CLIP model mm_vision_tower names (as the original loader does), "
                   "from the copy inside the checkpoint, or auto (named when available, else the copy).")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
def convert_command(src, dst, vision_tower, vision_source, force):
    """Convert an original LLaVA-Med v1.5 checkpoint SRC (folder or hub id, model_type llava_mistral)
    into an HF LlavaForConditionalGeneration folder DST (model, processor, tokenizer, chat template)."""
    from pathlib import Path

    from .convert import ConversionError, convert_checkpoint
    from derma_vlm.loading import resolve_model_folder

    try:
        folder = resolve_model_folder(src)
        out = convert_checkpoint(folder, Path(dst), vision_tower=vision_tower, vision_source=vision_source,
                                 overwrite=force)
    except (ConversionError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"converted {src} -> {out}")
