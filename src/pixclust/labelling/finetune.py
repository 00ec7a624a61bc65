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

How it trains (BatchNorm kept in eval mode, the loss, augmentation, early stopping
on a held-out split) is told in ``finetune_training``.

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

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixclust.embedding.extractor import FeatureExtractor, attach_runner, network_extractor
from pixclust.embedding.models import DEFAULT_MODEL, ModelSpec, resolve_model
from pixclust.embedding.record import ModelRecord, WeightsSource
from pixclust.embedding.transforms import Preprocessing, network_preprocessing
from pixclust.embedding.weights import load_network, state_dict_sha256
from pixclust.errors import UsageError
from pixclust.labelling.classifier import TrainedClassifier, train_classifier
from pixclust.labelling.finetune_training import (
    NetworkWithHead,
    module_state,
    pooled_features,
    stratified_split,
    train_network,
    training_device,
    validation_rank,
    write_softmax_weights,
)

HEAD = "fine-tuned linear"


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
        return max(self.history, key=validation_rank)["epoch"]


def finetune_classifier(
    paths: Sequence[str],
    labels: Sequence[str],
    *,
    base: ModelRecord,
    settings: FinetuneSettings = FinetuneSettings(),
    random_state: int = 0,
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
    prep = network_preprocessing(network, settings.input_size, ink=spec.ink)
    split = stratified_split(paths, labels, settings.validation_fraction, random_state)
    network.to(training_device())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_state)
        train_paths = [split.paths[i] for i in split.train]
        probe_features = pooled_features(network, train_paths, prep, settings.batch_size)
        probe = train_classifier(
            probe_features,
            split.labels[split.train],
            embedding_model=base.to_dict(),
            heads=("logistic",),
            random_state=random_state,
        )
        model = NetworkWithHead(network, probe.estimator)
        history = train_network(model, trained_modules, prep, split, probe.classes, settings, random_state)
    network.cpu()
    write_softmax_weights(probe.estimator, model.head)
    extractor = network_extractor(spec, network, WeightsSource("finetuned", source.describe()), prep)
    trained = {key: value.numpy() for key, value in module_state(network, trained_modules).items()}
    record = dataclasses.replace(extractor.record, model_id=extractor.model_id)
    return dataclasses.replace(
        probe,
        embedding_model=record.to_dict(),
        head=HEAD,
        params=dataclasses.asdict(settings),
        cv_f1=float(max(history, key=validation_rank)["validation_f1"]),
        class_counts={name: int(np.sum(np.asarray(labels) == name)) for name in probe.classes},
        finetuned=FinetunedNetwork(base.to_dict(), trained, history, [split.paths[i] for i in split.validation]),
    )


def finetuned_extractor(
    classifier: TrainedClassifier, *, runtime: str = "auto", precision: str = "auto"
) -> FeatureExtractor:
    """The fine-tuned network of a classifier, rebuilt and checked against the model id recorded at training."""
    import torch

    assert classifier.finetuned is not None
    record = ModelRecord.from_dict(classifier.embedding_model)
    base = ModelRecord.from_dict(classifier.finetuned.base)
    spec = _network_spec(base)
    network, _ = _base_network(
        spec, base, fix="reinstall the weights it was fine-tuned from, or train again with 'pixclust train --finetune'"
    )
    trained = {key: torch.from_numpy(value) for key, value in classifier.finetuned.trained.items()}
    try:
        unexpected = network.load_state_dict(trained, strict=False).unexpected_keys
    except RuntimeError as error:
        # Torch's message runs over many lines; the gist is that the file's shapes are not the network's.
        raise UsageError(
            f"the classifier's trained tensors have other shapes than model {spec.name}'s; "
            "train again with 'pixclust train --finetune'"
        ) from error
    extractor = network_extractor(spec, network, record.weights, Preprocessing(**record.preprocessing))
    if unexpected or extractor.model_id != record.model_id:
        raise UsageError(
            f"the fine-tuned network rebuilt from the classifier gives model id {extractor.model_id}, "
            f"not the recorded {record.model_id}; train again with 'pixclust train --finetune'"
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


def _network_spec(record: ModelRecord) -> ModelSpec:
    """The registry entry of the network a model record names; only timm networks can be fine-tuned."""
    if not record.made_by_pixclust:
        raise UsageError(
            "--finetune rebuilds the network that embedded the images, and these embeddings were not made by "
            "pixclust; give --in a run folder from 'pixclust cluster'"
        )
    spec = resolve_model(record.model)
    if spec.family != "timm":
        raise UsageError(
            f"model '{spec.name}' ({spec.description}) has no network to fine-tune; cluster the images with a "
            f"network such as {DEFAULT_MODEL}, or drop --finetune"
        )
    return spec


def _base_network(spec: ModelSpec, record: ModelRecord, *, fix: str) -> tuple[Any, WeightsSource]:
    """The network the record describes, with weights whose SHA-256 is the recorded one, and their source."""
    network, source = load_network(spec, record.weights.weights_option())
    if state_dict_sha256(network) != record.weights_sha256:
        raise UsageError(f"the weights of model {spec.name} ({source.describe()}) are not the ones recorded; {fix}")
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
