"""Fine-tuning's training: the held-out split, augmented batches, the network with its linear head, the epochs.

``finetune.finetune_classifier`` rebuilds the network, fits the linear probe on the
training split and hands both to :func:`train_network`.

Every BatchNorm layer stays in eval mode, the trained ones included (their
scale and shift still learn): the probe was fitted on features made with the
running statistics, and a batch's own statistics moved them so far that the
first epoch's training loss on 72 digit images at 128 px was at chance (1.07, ln 3 =
1.10) against 0.54 with the running statistics kept. It also keeps a batch's
composition from changing what the network computes.

Training: cross-entropy with the inverse-frequency class weights of the frozen
path (scikit-learn's "balanced"), AdamW, a random resized crop (50-100% of the
area, aspect 3:4 to 4:3) and a horizontal flip half the time. A stratified
validation split is held out; after each epoch its loss decides whether these
are the best weights so far, and training stops after ``patience`` epochs
without one. The linear probe alone counts as epoch 0, so fine-tuning that
never helps on the held-out images leaves the probe. The loss rather than the
macro F1: a validation split of a few dozen images moves F1 in steps of one
image, and on both cases measured F1 kept the worse weights. On 90 digits (18
held out) it kept the probe (validation F1 0.944, loss 0.351) over epoch 2 (F1
0.889, loss 0.329), which scored 0.944 against 0.967 on 90 unseen digits; on
300 Fashion-MNIST images at 96 px it kept epoch 1 (unseen 0.759) where the loss
kept epoch 5 (0.763).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pixclust.embedding.embedder import ImageDecoder, decoded_batches
from pixclust.embedding.transforms import ImageTransform, Preprocessing
from pixclust.errors import UsageError
from pixclust.progress import progress_bar

if TYPE_CHECKING:
    from pixclust.labelling.finetune import FinetuneSettings

# The smallest class must leave 2 images to the probe's cross-validation and 1 to validation.
MIN_PER_CLASS = 3


class AugmentingTransform(ImageTransform):
    """The network's transform on a random part of the image, mirrored half the time (training only).

    The decoder reseeds it for every batch (``embedder.ImageDecoder``), so
    decode workers never repeat each other's crops, and an epoch's crops are
    the same whichever worker decodes which batch.
    """

    min_area = 0.5
    max_aspect = 4 / 3

    def __init__(self, prep: Preprocessing) -> None:
        super().__init__(prep)
        self.random = np.random.default_rng(0)

    def reseed(self, seed: np.random.SeedSequence) -> None:
        self.random = np.random.default_rng(seed)

    def __call__(self, image: Any) -> np.ndarray:
        pixels = super().__call__(image)
        return np.ascontiguousarray(pixels[:, ::-1]) if self.random.random() < 0.5 else pixels

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        area_draw, aspect_draw, x_draw, y_draw = self.random.random(4).tolist()
        area = min(width, height) ** 2 * (self.min_area + (1 - self.min_area) * area_draw)
        aspect = math.exp(math.log(self.max_aspect) * (2 * aspect_draw - 1))
        box_width = min(width, math.sqrt(area * aspect))
        box_height = min(height, math.sqrt(area / aspect))
        left = x_draw * (width - box_width)
        top = y_draw * (height - box_height)
        return (left, top, left + box_width, top + box_height)


def training_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def module_state(network: Any, modules: Sequence[str]) -> dict[str, Any]:
    """Copies of the state-dict entries (parameters and BatchNorm statistics) that ``modules`` own, on the CPU."""
    owners = set(modules)
    return {
        key: value.detach().cpu().clone()
        for key, value in network.state_dict().items()
        if key.rpartition(".")[0] in owners
    }


@dataclass(frozen=True)
class Split:
    paths: list[str]
    labels: np.ndarray
    train: np.ndarray
    validation: np.ndarray


def stratified_split(paths: Sequence[str], labels: Sequence[str], fraction: float, random_state: int) -> Split:
    from sklearn.model_selection import train_test_split

    y = np.asarray(labels, dtype=object)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise UsageError(f"training needs at least two classes; the labels have only {list(classes)}")
    if counts.min() < MIN_PER_CLASS:
        raise UsageError(
            f"class '{classes[counts.argmin()]}' has {counts.min()} images; --finetune needs at least {MIN_PER_CLASS} "
            "per class (2 to train, 1 to validate): label more or drop the class"
        )
    rows = np.arange(len(y))
    validation_size = max(len(classes), round(fraction * len(y)))
    train, validation = train_test_split(rows, test_size=validation_size, stratify=y, random_state=random_state)
    return Split(list(paths), y, np.sort(train), np.sort(validation))


def _image_batches(
    paths: Sequence[str], transform: ImageTransform, batch_size: int, *, seed: int | None = None
) -> Iterator[tuple[int, Any]]:
    """(offset, N x 3 x H x W network input) in input order; an image that no longer decodes is the user's to fix.

    ``seed`` reseeds a random transform for each batch (``embedder.ImageDecoder``).
    """
    import torch

    from pixclust.embedding.network_input import NormalisedImages

    normalise = NormalisedImages(transform.prep.mean, transform.prep.std)
    decoder = ImageDecoder(transform, transform.prep.resize_to, seed=seed)
    offset = 0
    with contextlib.closing(decoded_batches(paths, decoder, batch_size=batch_size)) as batches:
        for items in batches:
            for item in items:
                if item.error is not None:
                    raise UsageError(
                        f"labelled image {paths[item.index]} cannot be used now ({item.error.reason}: "
                        f"{item.error.detail}); fix it or drop it from the labels"
                    )
            pixels = torch.from_numpy(np.stack([item.array for item in items]))
            yield offset, normalise(pixels).contiguous(memory_format=torch.channels_last)
            offset += len(items)


def pooled_features(network: Any, paths: Sequence[str], prep: Preprocessing, batch_size: int) -> np.ndarray:
    """Pooled features of the images with the network in eval mode and the eval transform."""
    import torch

    device = training_device()
    with torch.inference_mode():
        parts = [
            network(pixels.to(device)).float().cpu()
            for _, pixels in _image_batches(paths, ImageTransform(prep), batch_size)
        ]
    return torch.cat(parts).numpy()


class NetworkWithHead:
    """The network and a linear layer on its L2-normalised features, started from a logistic regression."""

    def __init__(self, network: Any, logistic: Any) -> None:
        import torch

        weight, bias = softmax_weights(logistic)
        self.network = network
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0]).to(training_device())
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(weight))
            self.head.bias.copy_(torch.from_numpy(bias))

    def __call__(self, pixels: Any) -> Any:
        import torch.nn.functional as F

        return self.head(F.normalize(self.network(pixels), dim=1))


def softmax_weights(logistic: Any) -> tuple[np.ndarray, np.ndarray]:
    """C x d weights and C biases whose softmax is the logistic regression's predict_proba.

    A binary logistic regression keeps one row w: sigmoid(w.x + b) is the softmax of (-(w.x + b)/2, (w.x + b)/2).
    """
    coef, intercept = logistic.coef_.astype(np.float32), logistic.intercept_.astype(np.float32)
    if len(logistic.classes_) == 2:
        return np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def write_softmax_weights(logistic: Any, head: Any) -> None:
    """The inverse of ``softmax_weights``: the trained head back into the logistic regression."""
    weight = head.weight.detach().cpu().double().numpy()
    bias = head.bias.detach().cpu().double().numpy()
    if len(logistic.classes_) == 2:
        logistic.coef_, logistic.intercept_ = (weight[1] - weight[0])[None, :], bias[1:] - bias[:1]
    else:
        logistic.coef_, logistic.intercept_ = weight, bias


def train_network(
    model: NetworkWithHead,
    trained_modules: Sequence[str],
    prep: Preprocessing,
    split: Split,
    classes: Sequence[str],
    settings: FinetuneSettings,
    random_state: int,
) -> list[dict[str, Any]]:
    """Epochs of training with early stopping; leaves the best weights in ``model`` and returns the history."""
    import torch
    from sklearn.utils.class_weight import compute_class_weight

    targets = np.searchsorted(np.asarray(classes, dtype=object), split.labels)
    weights = compute_class_weight("balanced", classes=np.arange(len(classes)), y=targets[split.train])
    loss_function = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32, device=training_device())
    )
    trainable = _unfreeze(model.network, trained_modules)
    optimizer = torch.optim.AdamW(
        [
            {"params": trainable, "lr": settings.backbone_lr},
            {"params": model.head.parameters(), "lr": settings.head_lr},
        ],
        weight_decay=settings.weight_decay,
    )
    validate = _Validation(split, targets, prep, settings.batch_size, loss_function)
    history = [{"epoch": 0, "train_loss": None, "train_accuracy": None, **validate(model)}]
    best = _snapshot(model, trained_modules)
    order = np.random.default_rng(random_state)
    augment = AugmentingTransform(prep)
    # Eval mode throughout, BatchNorm included (see the module docstring): requires_grad alone says what learns.
    model.network.eval()
    with progress_bar("fine-tuning", settings.epochs * len(split.train)) as advance:
        for epoch in range(1, settings.epochs + 1):
            rows = order.permutation(split.train)
            fit = _train_epoch(
                model,
                optimizer,
                loss_function,
                [split.paths[i] for i in rows],
                targets[rows],
                augment,
                int(order.integers(2**63)),
                settings.batch_size,
                advance,
            )
            history.append({"epoch": epoch, **fit, **validate(model)})
            if validation_rank(history[-1]) > validation_rank(history[best.epoch]):
                best = _snapshot(model, trained_modules, epoch)
            elif epoch - best.epoch >= settings.patience:
                break
    best.restore(model)
    return history


def _unfreeze(network: Any, modules: Sequence[str]) -> list[Any]:
    """Let only the parameters of ``modules`` learn; returns them."""
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    trainable = [parameter for name in modules for parameter in network.get_submodule(name).parameters(recurse=False)]
    for parameter in trainable:
        parameter.requires_grad_(True)
    return trainable


def _train_epoch(
    model: NetworkWithHead,
    optimizer: Any,
    loss_function: Any,
    paths: Sequence[str],
    targets: np.ndarray,
    augment: AugmentingTransform,
    augment_seed: int,
    batch_size: int,
    advance: Any,
) -> dict[str, float]:
    import torch

    device = training_device()
    total_loss, correct = 0.0, 0
    for offset, pixels in _image_batches(paths, augment, batch_size, seed=augment_seed):
        expected = torch.from_numpy(targets[offset : offset + len(pixels)]).to(device)
        logits = model(pixels.to(device))
        loss = loss_function(logits, expected)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(pixels)
        correct += int((logits.argmax(1) == expected).sum())
        advance(len(pixels))
    return {"train_loss": total_loss / len(paths), "train_accuracy": correct / len(paths)}


class _Validation:
    """Weighted loss and macro F1 of the model on the held-out images (eval mode, eval transform)."""

    def __init__(
        self, split: Split, targets: np.ndarray, prep: Preprocessing, batch_size: int, loss_function: Any
    ) -> None:
        self.paths = [split.paths[i] for i in split.validation]
        self.targets = targets[split.validation]
        self.prep = prep
        self.batch_size = batch_size
        self.loss_function = loss_function

    def __call__(self, model: NetworkWithHead) -> dict[str, float]:
        import torch
        import torch.nn.functional as F
        from sklearn.metrics import f1_score

        device = training_device()
        features = torch.from_numpy(pooled_features(model.network, self.paths, self.prep, self.batch_size)).to(device)
        with torch.inference_mode():
            logits = model.head(F.normalize(features, dim=1))
            loss = float(self.loss_function(logits, torch.from_numpy(self.targets).to(device)))
        predicted = logits.argmax(1).cpu().numpy()
        return {"validation_loss": loss, "validation_f1": float(f1_score(self.targets, predicted, average="macro"))}


def validation_rank(row: dict[str, Any]) -> tuple[float, float]:
    """Higher is better: the lower validation loss, then (for an exact tie) the higher macro F1."""
    return (-row["validation_loss"], row["validation_f1"])


@dataclass
class _Snapshot:
    epoch: int
    network: dict[str, Any]
    head: dict[str, Any]

    def restore(self, model: NetworkWithHead) -> None:
        model.network.load_state_dict(self.network, strict=False)
        model.head.load_state_dict(self.head)


def _snapshot(model: NetworkWithHead, modules: Sequence[str], epoch: int = 0) -> _Snapshot:
    head = {key: value.detach().cpu().clone() for key, value in model.head.state_dict().items()}
    return _Snapshot(epoch, module_state(model.network, modules), head)
