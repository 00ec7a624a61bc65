"""Commands on embeddings already made: the look-alikes of a query, and duplicate groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pixclust.cli.options import (
    EmbeddingsIn,
    Ids,
    Quiet,
    ShardAddress,
    ShardInputs,
    ShardRayWait,
    ShardSeed,
    chosen,
    out_option,
)
from pixclust.cli.render import render_duplicates, render_sharded_duplicates, render_similar


def similar_command(
    queries: Annotated[list[str], typer.Argument(help="Image files, folders of images, or ids already in --in.")],
    source: EmbeddingsIn,
    top: Annotated[int | None, typer.Option(help="Look-alikes per query [default: {top}].")] = None,
    min_sim: Annotated[
        float | None, typer.Option("--min-sim", help="Leave out matches below this cosine similarity.")
    ] = None,
    ids: Ids = None,
    out: Annotated[Path | None, out_option("Write similar.csv and a contact sheet per query here.")] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (HEAD_IP:6379) for --in a run of 'pixclust embed-shards'."),
    ] = None,
    ray_wait: Annotated[
        float | None,
        typer.Option(
            help="Seconds to wait while the Ray cluster has no CPU, for --in a run of 'pixclust embed-shards'."
        ),
    ] = None,
) -> None:
    """Find the images most like each query, by cosine similarity of embeddings (searched on Ray part by part
    for --in a run of 'pixclust embed-shards')."""
    from pixclust.curation.lookalikes import find_similar

    render_similar(
        find_similar(
            source,
            queries,
            **chosen(top=top, min_similarity=min_sim, ids=ids, out=out, address=address, ray_wait=ray_wait),
        )
    )


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


def duplicates_shards_command(
    vectors: ShardInputs,
    out: Annotated[Path, out_option("Folder for duplicates.csv (not a run of 'pixclust cluster').")],
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Cosine similarity (estimated from the index) two images need before their files are compared "
            "[default: {duplicate_threshold:.2f}; {unverified_threshold:.2f}, and no comparison, for vectors "
            "without content hashes]."
        ),
    ] = None,
    colour: Annotated[
        bool,
        typer.Option("--colour/--no-colour", help="A copy must keep the colours (as for 'pixclust duplicates')."),
    ] = True,
    keep: Annotated[
        str | None,
        typer.Option(
            help="Which image of a group to keep: largest, smallest-file, oldest, newest or first-path "
            "[default: {duplicate_keep}]."
        ),
    ] = None,
    mirror: Annotated[
        bool, typer.Option("--mirror", help="Also find copies flipped left to right (kind 'mirrored').")
    ] = False,
    sample_size: Annotated[
        int | None, typer.Option(help="Rows the index is trained on [default: max(50 x its cells, 100,000)].")
    ] = None,
    address: ShardAddress = None,
    ray_wait: ShardRayWait = 120,
    seed: ShardSeed = 0,
    quiet: Quiet = False,
) -> None:
    """Group duplicates among embeddings too many for one machine's memory, on Ray: the pairs an IVF-PQ index
    proposes are compared on their files as 'pixclust duplicates' compares them."""
    from pixclust.runs.sharded_duplicates import duplicates_shards

    found = duplicates_shards(
        vectors,
        out,
        **chosen(threshold=threshold, keep=keep, sample_size=sample_size),
        colour=colour,
        mirror=mirror,
        random_state=seed,
        address=address,
        ray_wait=ray_wait,
        quiet=quiet,
    )
    render_sharded_duplicates(found)
