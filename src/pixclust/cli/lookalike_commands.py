"""Commands on embeddings already made: the look-alikes of a query, and duplicate groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pixclust.cli.options import EmbeddingsIn, Ids, chosen, out_option
from pixclust.cli.render import render_duplicates, render_similar


def similar_command(
    queries: Annotated[list[str], typer.Argument(help="Image files, folders of images, or ids already in --in.")],
    source: EmbeddingsIn,
    top: Annotated[int | None, typer.Option(help="Look-alikes per query [default: {top}].")] = None,
    min_sim: Annotated[
        float | None, typer.Option("--min-sim", help="Leave out matches below this cosine similarity.")
    ] = None,
    ids: Ids = None,
    out: Annotated[Path | None, out_option("Write similar.csv and a contact sheet per query here.")] = None,
) -> None:
    """Find the images most like each query, by cosine similarity of embeddings."""
    from pixclust.curation.lookalikes import find_similar

    render_similar(find_similar(source, queries, **chosen(top=top, min_similarity=min_sim, ids=ids, out=out)))


def duplicates_command(
    source: Annotated[
        Path, typer.Argument(help="A folder of images, a run folder, or an embeddings.npy (with --ids).")
    ],
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Cosine similarity two images need before their files are compared [default: "
            "{duplicate_threshold:.2f}; {unverified_threshold:.2f}, and no comparison, for an embeddings.npy]."
        ),
    ] = None,
    colour: Annotated[
        bool,
        typer.Option(
            "--colour/--no-colour",
            help="A copy must keep the colours: --no-colour counts recoloured copies (hue changed) as duplicates.",
        ),
    ] = True,
    keep: Annotated[
        str | None,
        typer.Option(
            help="Which image of a group to keep: largest, smallest-file, oldest, newest or first-path "
            "(never a crop of another) [default: {duplicate_keep}]."
        ),
    ] = None,
    mirror: Annotated[
        bool, typer.Option("--mirror", help="Also find copies flipped left to right (kind 'mirrored').")
    ] = False,
    ids: Ids = None,
    out: Annotated[
        Path | None,
        out_option(
            "Run folder for duplicates.csv; a folder of images is embedded into its store, so a later "
            "'pixclust cluster FOLDER --out OUT' reuses every vector."
        ),
    ] = None,
    export: Annotated[
        bool, typer.Option("--export", help="Also link group N's images into OUT/duplicate_links/clusters/cluster_N/.")
    ] = False,
    move_copies: Annotated[
        Path | None,
        typer.Option(
            "--move-copies",
            metavar="DIR",
            help="Move every copy that is not its group's keeper into DIR/duplicate_copies/group_N/ (journalled; "
            "'pixclust restore DIR' puts them back).",
        ),
    ] = None,
) -> None:
    """Group exact, near and partial duplicates (crops), verified on the files, and suggest a keeper (--keep)."""
    from pixclust.curation.lookalikes import find_duplicate_images

    result = find_duplicate_images(
        source,
        **chosen(threshold=threshold, keep=keep, ids=ids, out=out, move_copies=move_copies),
        colour=colour,
        mirror=mirror,
        export=export,
    )
    render_duplicates(result)
