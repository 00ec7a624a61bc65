"""Commands from example images to labels and a classifier: label, train, evaluate, predict."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pixclust.cli.options import AllowPickle, EmbeddingsIn, Ids, Quiet, Seed, chosen, in_option, out_option
from pixclust.cli.render import (
    render_evaluation,
    render_labels,
    render_predictions,
    render_training,
    render_training_device,
)
from pixclust.errors import UsageError

if TYPE_CHECKING:
    from pixclust.labelling.finetune import FinetuneSettings

Classifier = Annotated[Path, typer.Argument(help="A classifier saved by 'pixclust train'.")]


def label_command(
    refs: Annotated[
        Path, typer.Option(help="Folder with one subfolder of example images per class, or a CSV of class,id.")
    ],
    source: EmbeddingsIn,
    out: Annotated[Path, out_option("Folder for labels.csv and contact sheets.")],
    threshold: Annotated[
        list[float] | None,
        typer.Option(
            help="Cosine cut(s) for the nearest-example rule; repeat for a table [default: {label_thresholds}]."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="clusters (the run's clusters the examples claim; the rest is none), propagate "
            "(label propagation, per-class none cuts) or nearest (the nearest-example rule at the "
            "first --threshold) [default: {label_method}]."
        ),
    ] = None,
    suggest: Annotated[
        int, typer.Option(help="Also list N images worth labelling next, in suggested.csv with an 'answer' column.")
    ] = 0,
    feedback: Annotated[
        list[Path] | None,
        typer.Option(
            help="A suggested.csv with its answer column filled in (yes, no, none or a class name); "
            "the answers join the examples. Repeat for several rounds."
        ),
    ] = None,
    none: Annotated[
        bool,
        typer.Option(
            "--none/--no-none",
            help="Estimate a 'none' class; --no-none when every image belongs to one of the classes.",
        ),
    ] = True,
    ids: Ids = None,
    seed: Seed = None,
) -> None:
    """Label every image with a class of the examples in REFS, or 'none'; writes labels.csv and contact sheets."""
    from pixclust.labelling.workflows import label

    typed = chosen(method=method, thresholds=threshold, ids=ids, random_state=seed)
    render_labels(
        label(source, refs, out=out, suggest=suggest, estimate_none=none, feedback=feedback or (), **typed), out
    )


def train_command(
    labels: Annotated[Path, typer.Argument(help="CSV of path,label (e.g. labels.csv from 'pixclust label').")],
    source: Annotated[Path, in_option("Run folder, or an embeddings.npy (with --ids), holding those images.")],
    out: Annotated[Path, out_option("File to save the classifier to.")],
    head: Annotated[
        list[str] | None,
        typer.Option(help="logistic and/or mlp; repeat [default: {heads}, the better by cross-validation]."),
    ] = None,
    cv: Annotated[
        int | None, typer.Option(help="Cross-validation folds of the hyperparameter search [default: {cv_folds}].")
    ] = None,
    finetune: Annotated[
        bool,
        typer.Option(
            "--finetune",
            help="Also train the network's last blocks and a linear head on the images themselves "
            "(needs --in RUN with the images at their paths). Uses a CUDA GPU when there is one, "
            "else the CPU: minutes for a few hundred images.",
        ),
    ] = False,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Most epochs of --finetune; it stops earlier when the held-out images stop improving [default: {epochs}]."
        ),
    ] = None,
    ids: Ids = None,
    seed: Seed = None,
    quiet: Quiet = False,
) -> None:
    """Train a classifier on the embeddings of labelled images, with class weights and a cross-validated search.

    --finetune also trains the network's last blocks.
    """
    from pixclust.labelling.workflows import train

    settings = _finetune_settings(finetune, head=head, epochs=epochs)
    typed = chosen(heads=head, cv=cv, finetune_settings=settings, ids=ids, random_state=seed)
    render_training(train(labels, source, out=out, finetune=finetune, quiet=quiet, **typed), out)


def _finetune_settings(finetune: bool, *, head: list[str] | None, epochs: int | None) -> FinetuneSettings | None:
    """How --finetune trains, None without it; notes first that training will be slow when there is no GPU."""
    if finetune and head:
        raise UsageError(
            "--head chooses a head for frozen embeddings; --finetune always trains a linear head with the network, so drop --head"
        )
    if epochs is not None and not finetune:
        raise UsageError("--epochs is for --finetune; add --finetune or drop --epochs")
    if not finetune:
        return None
    from pixclust.labelling.finetune import FinetuneSettings, training_device

    render_training_device(training_device())
    return FinetuneSettings(**chosen(epochs=epochs))


def evaluate_command(
    model: Classifier,
    test: Annotated[Path, typer.Option(help="CSV of id,label: images with known classes.")],
    source: Annotated[
        Path | None,
        in_option("Run folder or embeddings.npy holding the test ids (default: embed the listed image files)."),
    ] = None,
    ids: Ids = None,
    out: Annotated[Path | None, out_option("Folder for roc.png.")] = None,
    allow_pickle: AllowPickle = False,
) -> None:
    """Per-class precision, recall, F1 and one-vs-rest AUC on a labelled test list, and the confusion matrix."""
    from pixclust.labelling.workflows import evaluate

    render_evaluation(evaluate(model, test, source=source, ids=ids, out=out, allow_pickle=allow_pickle))


def predict_command(
    model: Classifier,
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    allow_pickle: AllowPickle = False,
) -> None:
    """Label new images, embedding them with the model the classifier was trained on."""
    from pixclust.labelling.workflows import predict_images

    render_predictions(predict_images(model, images, allow_pickle=allow_pickle))
