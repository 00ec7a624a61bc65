"""Fine-tuning: the network's last blocks and a linear head, trained on the labelled images.

``pixclust train --finetune`` starts from the network that embedded the run
(rebuilt from the run's model record; its weights' SHA-256 must match) and
trains:

- the last ``last_groups`` of timm's parameter groups (``group_matcher``, stem to
  head order). For EfficientNet-Lite the default 1 is the last block stage
  (``blocks[-1]``) with the 1x1 head convolution and its BatchNorm (``conv_head``,
  ``bn2``), which timm groups with it. Everything else is frozen;
- a linear head on the L2-normalised pooled features. It starts as the
  frozen-embedding classifier (``classifier.train_classifier``, logistic heads
  only) fitted on the training split: linear probing, then fine-tuning (LP-FT,
  Kumar et al. 2022). A random head's large early gradients would distort the
  pretrained features, and a few hundred images give little to rebuild them from.

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

The classification output is the fine-tuned network's own linear head, kept as
the scikit-learn ``LogisticRegression`` it started from with the trained
weights written back, so ``classifier.evaluate``/``predict`` use it unchanged.
It is not a head refitted on fine-tuned embeddings: the training images'
fine-tuned features were pulled apart for exactly those images, so a refit
(and its cross-validation) would be scored on features that had seen the
labels, whereas the jointly trained head was chosen on held-out images.

The classifier file keeps a :class:`FinetunedNetwork`: the base network's record
and only the trained tensors (4.1 MB of EfficientNet-Lite0's 13.7 MB).
:func:`finetuned_extractor` rebuilds the base network, loads them, and checks
the model id recorded at training. The network then runs like any other
(``runtimes.make_runner``); its ONNX export is cached under its own model id,
which hashes the fine-tuned weights, so the base model's export is never
reused.

Training uses CUDA when torch sees a GPU, otherwise the CPU: slower (minutes
for a few hundred images at 224 px) but the same, and deterministic for a
given ``random_state``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixclust.embedding.embedder import ImageDecoder, decoded_batches
from pixclust.embedding.extractor import FeatureExtractor, attach_runner, network_extractor
from pixclust.embedding.models import DEFAULT_MODEL, ModelSpec, resolve_model
from pixclust.embedding.sources import PRECOMPUTED, model_weights_option
from pixclust.embedding.transforms import ImageTransform, Preprocessing, network_preprocessing
from pixclust.embedding.weights import load_network, state_dict_sha256
from pixclust.errors import UsageError
from pixclust.labelling.classifier import TrainedClassifier, train_classifier
from pixclust.progress import progress_bar

HEAD = "fine-tuned linear"
# The smallest class must leave 2 images to the probe's cross-validation and 1 to validation.
MIN_PER_CLASS = 3


@dataclass(frozen=True)
class FinetuneSettings:
    """How fine-tuning trains. ``input_size`` None keeps the network's own (224 for EfficientNet-Lite0); smaller is faster."""

    epochs: int = 10
    last_groups: int = 1
    batch_size: int = 32
    backbone_lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    validation_fraction: float = 0.2
    patience: int = 3
    input_size: int | None = None


@dataclass
class FinetunedNetwork:
    """What a classifier file keeps to rebuild its fine-tuned network.

    ``base`` is the record of the network training started from; ``trained``
    holds the state-dict entries of the modules that were trained (parameters
    and BatchNorm statistics), everything else being the base network's.
    ``history`` has one row per epoch (epoch 0: the linear probe alone) and
    ``validation`` the held-out images.
    """

    base: dict[str, Any]
    trained: dict[str, np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)

    @property
    def best_epoch(self) -> int:
        return max(self.history, key=_validation_rank)["epoch"]


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


def finetune_classifier(
    paths: Sequence[str],
    labels: Sequence[str],
    *,
    base: dict[str, Any],
    settings: FinetuneSettings = FinetuneSettings(),
    random_state: int = 0,
    quiet: bool = False,
) -> TrainedClassifier:
    """Fine-tune the network ``base`` records (a run's model record) and a linear head on the labelled images."""
    import torch

    _check_settings(settings)
    spec = _network_spec(base)
    _check_images_present(paths)
    network, source = _base_network(
        spec, base, fix="re-run 'pixclust cluster' to embed with the weights installed now, then label and train again"
    )
    trained_modules = _last_group_modules(network, settings.last_groups)
    # timm's own eval crop: the registry's crop_fraction was measured for clustering, not for training.
    prep = network_preprocessing(network, settings.input_size)
    split = _stratified_split(paths, labels, settings.validation_fraction, random_state)
    network.to(training_device())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_state)
        train_paths = [split.paths[i] for i in split.train]
        probe_features = _features(network, train_paths, prep, settings.batch_size)
        probe = train_classifier(
            probe_features,
            split.labels[split.train],
            embedding_model=base,
            heads=("logistic",),
            random_state=random_state,
        )
        model = _NetworkWithHead(network, probe.estimator)
        history = _train(model, trained_modules, prep, split, probe.classes, settings, random_state, quiet)
    network.cpu()
    _write_softmax_weights(probe.estimator, model.head)
    extractor = network_extractor(spec, network, f"fine-tuned by pixclust train --finetune from {source}", prep)
    trained = {key: value.numpy() for key, value in _module_state(network, trained_modules).items()}
    return dataclasses.replace(
        probe,
        embedding_model=extractor.record | {"model_id": extractor.model_id},
        head=HEAD,
        params=dataclasses.asdict(settings),
        cv_f1=float(max(history, key=_validation_rank)["validation_f1"]),
        class_counts={name: int(np.sum(np.asarray(labels) == name)) for name in probe.classes},
        finetuned=FinetunedNetwork(dict(base), trained, history, [split.paths[i] for i in split.validation]),
    )


def finetuned_extractor(
    classifier: TrainedClassifier, *, runtime: str = "auto", precision: str = "auto"
) -> FeatureExtractor:
    """The fine-tuned network of a classifier, rebuilt and checked against the model id recorded at training."""
    import torch

    assert classifier.finetuned is not None
    record, base = classifier.embedding_model, classifier.finetuned.base
    spec = _network_spec(base)
    network, _ = _base_network(
        spec, base, fix="reinstall the weights it was fine-tuned from, or train again with 'pixclust train --finetune'"
    )
    trained = {key: torch.from_numpy(value) for key, value in classifier.finetuned.trained.items()}
    unexpected = network.load_state_dict(trained, strict=False).unexpected_keys
    extractor = network_extractor(spec, network, record["weights"], Preprocessing(**record["preprocessing"]))
    if unexpected or extractor.model_id != record["model_id"]:
        raise UsageError(
            f"the fine-tuned network rebuilt from the classifier gives model id {extractor.model_id}, "
            f"not the recorded {record['model_id']}; train again with 'pixclust train --finetune'"
        )
    return attach_runner(extractor, network, runtime=runtime, precision=precision)


def _check_settings(settings: FinetuneSettings) -> None:
    if settings.epochs < 1:
        raise UsageError(f"--epochs {settings.epochs} must be at least 1")
    if settings.last_groups < 1:
        raise UsageError(f"last_groups={settings.last_groups} must be at least 1 (the head end of the network)")
    if not 0 < settings.validation_fraction < 1:
        raise UsageError(f"validation_fraction={settings.validation_fraction} must be between 0 and 1")


def _check_images_present(paths: Sequence[str]) -> None:
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise UsageError(
            f"--finetune reads the labelled images, and {len(missing)} are not at the paths the run stored "
            f"(first: {missing[0]}); put them back, or re-run 'pixclust cluster' where they are now"
        )


def _network_spec(record: dict[str, Any]) -> ModelSpec:
    """The registry entry of the network a model record names; only timm networks can be fine-tuned."""
    if not record.get("model") or record.get("weights") == PRECOMPUTED:
        raise UsageError(
            "--finetune rebuilds the network that embedded the images, and these embeddings were not made by "
            "pixclust; give --in a run folder from 'pixclust cluster'"
        )
    spec = resolve_model(record["model"])
    if spec.family != "timm":
        raise UsageError(
            f"model '{spec.name}' ({spec.description}) has no network to fine-tune; cluster the images with a "
            f"network such as {DEFAULT_MODEL}, or drop --finetune"
        )
    return spec


def _base_network(spec: ModelSpec, record: dict[str, Any], *, fix: str) -> tuple[Any, str]:
    """The network the record describes, with weights whose SHA-256 is the recorded one, and their source."""
    network, source = load_network(spec, model_weights_option(record))
    if state_dict_sha256(network) != record.get("weights_sha256"):
        raise UsageError(f"the weights of model {spec.name} ({source}) are not the ones recorded; {fix}")
    return network, source


def _last_group_modules(network: Any, last_groups: int) -> list[str]:
    """Names of the modules that own the parameters of timm's last ``last_groups`` parameter groups."""
    from timm.models import group_parameters

    if not hasattr(network, "group_matcher"):
        raise UsageError(
            f"{type(network).__name__} does not say where its blocks are, so it cannot be fine-tuned; drop --finetune"
        )
    groups = list(group_parameters(network, network.group_matcher(coarse=True)).values())
    if last_groups >= len(groups):
        raise UsageError(
            f"last_groups={last_groups}: the network has {len(groups)} groups; train fewer to leave its stem frozen"
        )
    return sorted({name.rpartition(".")[0] for group in groups[-last_groups:] for name in group})


def _module_state(network: Any, modules: Sequence[str]) -> dict[str, Any]:
    """Copies of the state-dict entries (parameters and BatchNorm statistics) that ``modules`` own, on the CPU."""
    owners = set(modules)
    return {
        key: value.detach().cpu().clone()
        for key, value in network.state_dict().items()
        if key.rpartition(".")[0] in owners
    }


@dataclass(frozen=True)
class _Split:
    paths: list[str]
    labels: np.ndarray
    train: np.ndarray
    validation: np.ndarray


def _stratified_split(paths: Sequence[str], labels: Sequence[str], fraction: float, random_state: int) -> _Split:
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
    return _Split(list(paths), y, np.sort(train), np.sort(validation))


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
            for index, _, _, error in items:
                if error is not None:
                    raise UsageError(
                        f"labelled image {paths[index]} cannot be used now ({error.reason}: {error.detail}); "
                        "fix it or drop it from the labels"
                    )
            pixels = torch.from_numpy(np.stack([array for _, array, _, _ in items]))
            yield offset, normalise(pixels).contiguous(memory_format=torch.channels_last)
            offset += len(items)


def _features(network: Any, paths: Sequence[str], prep: Preprocessing, batch_size: int) -> np.ndarray:
    """Pooled features of the images with the network in eval mode and the eval transform."""
    import torch

    device = training_device()
    with torch.inference_mode():
        parts = [
            network(pixels.to(device)).float().cpu()
            for _, pixels in _image_batches(paths, ImageTransform(prep), batch_size)
        ]
    return torch.cat(parts).numpy()


class _NetworkWithHead:
    """The network and a linear layer on its L2-normalised features, started from a logistic regression."""

    def __init__(self, network: Any, logistic: Any) -> None:
        import torch

        weight, bias = _softmax_weights(logistic)
        self.network = network
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0]).to(training_device())
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(weight))
            self.head.bias.copy_(torch.from_numpy(bias))

    def __call__(self, pixels: Any) -> Any:
        import torch.nn.functional as F

        return self.head(F.normalize(self.network(pixels), dim=1))


def _softmax_weights(logistic: Any) -> tuple[np.ndarray, np.ndarray]:
    """C x d weights and C biases whose softmax is the logistic regression's predict_proba.

    A binary logistic regression keeps one row w: sigmoid(w.x + b) is the softmax of (-(w.x + b)/2, (w.x + b)/2).
    """
    coef, intercept = logistic.coef_.astype(np.float32), logistic.intercept_.astype(np.float32)
    if len(logistic.classes_) == 2:
        return np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def _write_softmax_weights(logistic: Any, head: Any) -> None:
    """The inverse of ``_softmax_weights``: the trained head back into the logistic regression."""
    weight = head.weight.detach().cpu().double().numpy()
    bias = head.bias.detach().cpu().double().numpy()
    if len(logistic.classes_) == 2:
        logistic.coef_, logistic.intercept_ = (weight[1] - weight[0])[None, :], bias[1:] - bias[:1]
    else:
        logistic.coef_, logistic.intercept_ = weight, bias


def _train(
    model: _NetworkWithHead,
    trained_modules: Sequence[str],
    prep: Preprocessing,
    split: _Split,
    classes: Sequence[str],
    settings: FinetuneSettings,
    random_state: int,
    quiet: bool,
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
    with progress_bar("fine-tuning", settings.epochs * len(split.train), quiet=quiet) as advance:
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
            if _validation_rank(history[-1]) > _validation_rank(history[best.epoch]):
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
    model: _NetworkWithHead,
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
        self, split: _Split, targets: np.ndarray, prep: Preprocessing, batch_size: int, loss_function: Any
    ) -> None:
        self.paths = [split.paths[i] for i in split.validation]
        self.targets = targets[split.validation]
        self.prep = prep
        self.batch_size = batch_size
        self.loss_function = loss_function

    def __call__(self, model: _NetworkWithHead) -> dict[str, float]:
        import torch
        import torch.nn.functional as F
        from sklearn.metrics import f1_score

        device = training_device()
        features = torch.from_numpy(_features(model.network, self.paths, self.prep, self.batch_size)).to(device)
        with torch.inference_mode():
            logits = model.head(F.normalize(features, dim=1))
            loss = float(self.loss_function(logits, torch.from_numpy(self.targets).to(device)))
        predicted = logits.argmax(1).cpu().numpy()
        return {"validation_loss": loss, "validation_f1": float(f1_score(self.targets, predicted, average="macro"))}


def _validation_rank(row: dict[str, Any]) -> tuple[float, float]:
    """Higher is better: the lower validation loss, then (for an exact tie) the higher macro F1."""
    return (-row["validation_loss"], row["validation_f1"])


@dataclass
class _Snapshot:
    epoch: int
    network: dict[str, Any]
    head: dict[str, Any]

    def restore(self, model: _NetworkWithHead) -> None:
        model.network.load_state_dict(self.network, strict=False)
        model.head.load_state_dict(self.head)


def _snapshot(model: _NetworkWithHead, modules: Sequence[str], epoch: int = 0) -> _Snapshot:
    head = {key: value.detach().cpu().clone() for key, value in model.head.state_dict().items()}
    return _Snapshot(epoch, _module_state(model.network, modules), head)
