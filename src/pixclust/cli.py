"""The ``pixclust`` command: parse arguments, call the library, render the result.

Nothing else lives here. The library raises :class:`PixclustError` for
anything a user can cause; :func:`main` prints its one-line message and
exits with its code, so a user never sees a traceback for their own mistake.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from pixclust.errors import PixclustError, UsageError

if TYPE_CHECKING:
    from pixclust.pipeline import RunResult

app = typer.Typer(
    help="Organise unlabeled images: embed them with a pretrained network, cluster, and export the groups.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_INTERRUPTED = 130


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    # Messages stay one line however narrow the terminal: scripts and people grep them.
    return Console(stderr=stderr, highlight=False, soft_wrap=stderr)


@app.command("cluster")
def cluster_command(
    source: Annotated[Optional[Path], typer.Argument(help="Folder (searched recursively) or file of images.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder [default: pixclust-out/<folder name>].")] = None,
    k: Annotated[Optional[str], typer.Option(help="Number of clusters, or 'auto' to choose by silhouette [default: auto].")] = None,
    k_min: Annotated[Optional[int], typer.Option(help="Smallest k scanned by --k auto [default: 2].")] = None,
    k_max: Annotated[Optional[int], typer.Option(help="Largest k scanned by --k auto [default: 20].")] = None,
    method: Annotated[Optional[str], typer.Option(help="kmeans, agglomerative, gmm or hdbscan [default: kmeans].")] = None,
    reduce: Annotated[Optional[str], typer.Option(help="Space to cluster in: pca, umap, lle, spectral, none [default: pca].")] = None,
    n_components: Annotated[Optional[int], typer.Option(help="Dimensions kept by --reduce [default: 50 for pca, 10 otherwise].")] = None,
    model: Annotated[Optional[str], typer.Option(help="Feature model; see 'pixclust models' [default: efficientnet-lite0].")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Weights file for the model, or 'random' for plumbing tests.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; the same seed gives the same clusters [default: 0].")] = None,
    truth: Annotated[Optional[str], typer.Option(help="Score against known classes: 'folders' or a CSV of path,label.")] = None,
    copy: Annotated[Optional[bool], typer.Option("--copy/--link", help="Copy images into cluster folders instead of linking.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per model call [default: 32].")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Decode worker processes [default: one per core].")] = None,
    max_pixels: Annotated[Optional[int], typer.Option(help="Skip images with more pixels than this (bomb guard).")] = None,
    include_hidden: Annotated[Optional[bool], typer.Option("--include-hidden", help="Also read hidden files and folders.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Repeat a run from its run.json; other options override it.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Group the images in SOURCE; writes clusters.csv, errors.csv, run.json and clusters/ to the run folder."""
    from pixclust.pipeline import RunConfig, run

    given = {
        "source": None if source is None else str(source),
        "out": None if out is None else str(out),
        "k": k,
        "k_min": k_min,
        "k_max": k_max,
        "method": method,
        "reduce": reduce,
        "n_components": n_components,
        "model": model,
        "weights": weights,
        "seed": seed,
        "truth": truth,
        "copy": copy,
        "batch_size": batch_size,
        "workers": workers,
        "max_pixels": max_pixels,
        "include_hidden": include_hidden,
    }
    settings = _read_config(config) if config else {}
    settings.update({name: value for name, value in given.items() if value is not None})
    if not settings.get("source"):
        raise UsageError("no image folder given; run: pixclust cluster FOLDER (or --config RUN/run.json)")
    settings.setdefault("out", str(Path("pixclust-out") / (Path(settings["source"]).resolve().name or "run")))
    _render_run(run(RunConfig.from_dict(settings), quiet=quiet))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"--config {path}: cannot read it ({error.strerror}); pass a run folder's run.json") from error
    except json.JSONDecodeError as error:
        raise UsageError(f"--config {path}: not valid JSON ({error.msg}, line {error.lineno})") from error
    settings = record.get("config") if isinstance(record, dict) else None
    if not isinstance(settings, dict):
        raise UsageError(f"--config {path}: has no 'config' section; pass a run.json written by pixclust cluster")
    return dict(settings)


def _render_run(result: RunResult) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"{result.clustering.n_clusters} clusters", title_justify="left")
    table.add_column("cluster")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    table.add_column("duplication", justify="right")
    for row in result.summary:
        table.add_row(row.name, f"{row.images:,}", f"{row.share:.1%}", f"{row.duplication:.1%}")
    total = len(result.embeddings)
    redundant = sum(row.duplication for row in result.summary)
    table.add_section()
    table.add_row("total", f"{total:,}", "100.0%", f"{redundant:.1%}")
    console.print(table)

    clustering = result.clustering
    scan = clustering.k_scan
    if scan is not None:
        elbow = "none" if scan.elbow_k is None else str(scan.elbow_k)
        console.print(f"k chosen by silhouette: {scan.silhouette_k} (scanned {scan.ks[0]}..{scan.ks[-1]}; elbow at {elbow})")
    silhouette = "n/a" if math.isnan(clustering.silhouette) else f"{clustering.silhouette:.3f}"
    console.print(f"silhouette: {silhouette}")
    if result.scores is not None:
        scores = result.scores
        console.print(
            f"against truth ({result.n_scored:,} images): ACC {scores['acc']:.3f}  NMI {scores['nmi']:.3f}  ARI {scores['ari']:.3f}"
        )
    embeddings = result.embeddings
    console.print(
        f"{total:,} images used, {len(embeddings.skipped):,} skipped"
        + (" (see errors.csv)" if embeddings.skipped else "")
        + f"; {embeddings.n_extracted:,} embedded, {embeddings.n_reused:,} reused from the store"
    )
    console.print(f"run folder: {result.run_dir}")


@app.command("models")
def models_command() -> None:
    """List the feature models, their dimensions, and whether each runs offline right now."""
    from rich.table import Table

    from pixclust.models import DEFAULT_MODEL, model_statuses

    table = Table()
    for column in ("model", "dim", "offline", "description", "weights"):
        table.add_column(column, justify="right" if column == "dim" else "left")
    for status in model_statuses():
        name = status.spec.name + (" (default)" if status.spec.name == DEFAULT_MODEL else "")
        table.add_row(name, str(status.spec.dim), "yes" if status.offline else "no", status.spec.description, status.note)
    console = _console()
    console.print(table)
    console.print("Any timm model also works as timm:NAME (weights download on first use).")


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the digit images and the run folder go.")] = Path("demo-out"),
    k: Annotated[str, typer.Option(help="Number of clusters (the digits have 10), or 'auto'.")] = "10",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Cluster scikit-learn's 1,797 handwritten digits (written as PNGs) and score against their classes."""
    from pixclust.demo import run_demo

    _console().print(f"Writing scikit-learn's digits as PNG files under {out} and clustering them...")
    _render_run(run_demo(out, k=k, quiet=quiet))


def main() -> None:
    """Entry point: run the Typer app, turning library errors and Ctrl-C into messages and exit codes."""
    try:
        app(standalone_mode=False)
    except PixclustError as error:
        _console(stderr=True).print(f"[red]error:[/red] {error}")
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _console(stderr=True).print("interrupted; embeddings made so far are saved, run the same command to resume")
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except Exception as error:
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
