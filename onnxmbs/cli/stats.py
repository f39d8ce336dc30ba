"""``onnxmbs stats merge``: add up stats files (shards made by ``profile --shard i/n`` or any scheduler)."""
from __future__ import annotations

import click

from onnxmbs.cli.options import clean_errors, refuse_overwrite


@click.group()
def stats() -> None:
    """Work with stats files written by `onnxmbs profile`."""


@stats.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Write the summed counts here.")
@click.option("--partial", is_flag=True,
              help="Merge an incomplete shard set (the file and the summary name the missing shards).")
@clean_errors
def merge(files: tuple[str, ...], output: str, partial: bool) -> None:
    """Add the counts of FILES (same model sha256, input shape, preprocessing) into one stats file."""
    from onnxmbs.files import write_json
    from onnxmbs.stats.statsfile import merge_stats

    refuse_overwrite(output, *files)
    doc = merge_stats(files, partial=partial)
    write_json(output, doc)
    click.echo(f"{len(files)} stats files, {doc.images} images, {len(doc.taps)} activations; "
               f"merged counts written to {output}")
    missing = doc.data.missing_shards
    if missing:
        click.echo(f"partial merge: shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing "
                   "(not counted; recorded in the file as data.missing_shards)")
