"""A classifier on frozen embeddings: train with class weights and a cross-validated search, evaluate, predict.

Two heads are searched, scikit-learn's logistic regression and a small MLP
with early stopping, each over a few settings, by stratified k-fold macro F1;
the best is refitted on everything. Classes are weighted by inverse frequency
(``class_weight="balanced"`` for the logistic regression, the same weights as
sample weights for the MLP). The classifier records the embedding model it
needs, so ``predict`` embeds new images exactly as the training images were
embedded. A classifier made by ``finetune.py`` is the same type, with
``finetuned`` holding what rebuilds its network. ``classifier_file.py`` saves
and loads both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pixclust.clustering.reduce import l2_normalize
from pixclust.errors import UsageError

if TYPE_CHECKING:
    from pixclust.labelling.finetune import FinetunedNetwork

HEADS = ("logistic", "mlp")
DEFAULT_CV_FOLDS = 3


@dataclass
class TrainedClassifier:
    """A fitted scikit-learn estimator over L2-normalised embeddings, with what it needs and how it was chosen.

    ``finetuned`` is None for a head on the run's frozen embeddings; for a fine-tuned
    classifier it rebuilds the network whose embeddings the estimator reads, and
    ``cv_f1`` is then the macro F1 on its held-out validation images.
    """

    estimator: Any
    classes: list[str]
    embedding_model: dict[str, Any]
    head: str
    params: dict[str, Any]
    cv_f1: float
    search: list[dict[str, Any]] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    finetuned: FinetunedNetwork | None = None

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """N x C probabilities, columns in ``classes`` order."""
        return self.estimator.predict_proba(l2_normalize(vectors))


def _candidates(head: str, random_state: int) -> tuple[Any, dict[str, list[Any]]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if head == "logistic":
        return LogisticRegression(class_weight="balanced", max_iter=2000), {"C": [0.1, 1.0, 10.0]}
    return (
        MLPClassifier(
            early_stopping=True, validation_fraction=0.15, n_iter_no_change=10, max_iter=300, random_state=random_state
        ),
        {"hidden_layer_sizes": [(128,), (256,)], "alpha": [1e-4, 1e-2]},
    )


def train_classifier(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    embedding_model: dict[str, Any],
    heads: Sequence[str] = HEADS,
    cv: int = DEFAULT_CV_FOLDS,
    random_state: int = 0,
) -> TrainedClassifier:
    """Search each head's settings by stratified ``cv``-fold macro F1 and refit the best on all the data."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.utils.class_weight import compute_sample_weight

    unknown = sorted(set(heads) - set(HEADS))
    if unknown or not heads:
        raise UsageError(f"unknown classifier head {unknown or heads}; choose from {', '.join(HEADS)}")
    y = np.asarray(labels, dtype=object)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise UsageError(f"training needs at least two classes; labels.csv has only {list(classes)}")
    folds = min(cv, int(counts.min()))
    if folds < 2:
        rare = classes[counts.argmin()]
        raise UsageError(f"class '{rare}' has {counts.min()} image; give at least 2 per class (or drop it) to train")
    X = l2_normalize(vectors)
    weights = compute_sample_weight("balanced", y)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=random_state)
    best: GridSearchCV | None = None
    trials = []
    for head in heads:
        estimator, grid = _candidates(head, random_state)
        search = GridSearchCV(estimator, grid, scoring="f1_macro", cv=splitter, refit=True)
        search.fit(X, y, **({} if head == "logistic" else {"sample_weight": weights}))
        for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True):
            trials.append({"head": head, "params": _plain(params), "cv_f1": float(score)})
        if best is None or search.best_score_ > best.best_score_:
            best, best_head = search, head
    assert best is not None
    return TrainedClassifier(
        estimator=best.best_estimator_,
        classes=[str(c) for c in best.best_estimator_.classes_],
        embedding_model=dict(embedding_model),
        head=best_head,
        params=_plain(best.best_params_),
        cv_f1=float(best.best_score_),
        search=trials,
        class_counts={str(c): int(n) for c, n in zip(classes, counts, strict=True)},
    )


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in params.items()}


@dataclass(frozen=True)
class ClassScores:
    """One class's evaluation. ``auc`` is None (shown as n/a) with a ``note`` when it cannot be computed."""

    name: str
    support: int
    precision: float | None
    recall: float | None
    f1: float | None
    auc: float | None
    note: str = ""


@dataclass
class Evaluation:
    """Per-class scores, the confusion matrix (rows: truth, columns: prediction) and ROC curve points."""

    classes: list[str]
    per_class: list[ClassScores]
    confusion: np.ndarray
    accuracy: float
    macro_f1: float | None
    roc: dict[str, tuple[np.ndarray, np.ndarray]]
    n: int


def evaluate(classifier: TrainedClassifier, vectors: np.ndarray, truth: Sequence[str]) -> Evaluation:
    """Score predictions against known labels; a class with no positive (or no negative) gets n/a, never NaN."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve

    truth = [str(label) for label in truth]
    unknown = sorted(set(truth) - set(classifier.classes))
    if unknown:
        raise UsageError(
            f"the test list has classes the classifier never saw: {', '.join(unknown)}; fix the labels or retrain"
        )
    if not truth:
        raise UsageError("the test list matched no images; check its ids against --in")
    proba = classifier.predict_proba(vectors)
    predicted = [classifier.classes[i] for i in proba.argmax(axis=1)]
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=classifier.classes, zero_division=np.nan
    )
    per_class, roc = [], {}
    y = np.asarray(truth)
    for c, name in enumerate(classifier.classes):
        positives = int(np.sum(y == name))
        note, auc = "", None
        if positives == 0:
            note = "no image of this class in the test list, so recall and AUC are undefined"
        elif positives == len(y):
            note = "every test image is of this class, so AUC is undefined"
        else:
            auc = float(roc_auc_score(y == name, proba[:, c]))
            fpr, tpr, _ = roc_curve(y == name, proba[:, c])
            roc[name] = (fpr, tpr)
        per_class.append(
            ClassScores(name, int(support[c]), _finite(precision[c]), _finite(recall[c]), _finite(f1[c]), auc, note)
        )
    defined = [row.f1 for row in per_class if row.f1 is not None and row.support > 0]
    return Evaluation(
        classes=list(classifier.classes),
        per_class=per_class,
        confusion=confusion_matrix(truth, predicted, labels=classifier.classes),
        accuracy=float(np.mean(np.asarray(predicted) == y)),
        macro_f1=float(np.mean(defined)) if defined else None,
        roc=roc,
        n=len(y),
    )


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probability: float
    probabilities: dict[str, float]


def predict(classifier: TrainedClassifier, paths: Sequence[str], vectors: np.ndarray) -> list[Prediction]:
    """The most probable class of each vector, with every class's probability."""
    proba = classifier.predict_proba(vectors)
    return [
        Prediction(
            path,
            classifier.classes[int(row.argmax())],
            float(row.max()),
            dict(zip(classifier.classes, map(float, row), strict=True)),
        )
        for path, row in zip(paths, proba, strict=True)
    ]
