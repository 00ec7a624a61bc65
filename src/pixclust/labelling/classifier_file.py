"""The classifier file that ``pixclust train`` writes and ``evaluate``/``predict`` read: parsed, never executed.

Format version 2 is a zip of two members:

- ``classifier.json``: ``format`` ("pixclust-classifier"), ``version`` (2),
  ``classes`` (the class names, in the order of the probability columns),
  ``head`` ("logistic", "mlp" or "fine-tuned linear"), ``params`` (the chosen
  head's hyper-parameters, or the fine-tuning settings), ``cv_f1``, ``search``
  (each setting tried and its cross-validated macro F1), ``class_counts``,
  ``embedding_model`` (the record of the model whose embeddings the classifier
  reads: name, weights and their SHA-256, preprocessing, model id), ``estimator``
  and ``finetuned``. ``estimator`` has the scikit-learn ``type``
  ("LogisticRegression" or "MLPClassifier"), its ``params`` (``get_params()``)
  and its ``fitted`` attributes that prediction reads: a JSON value, or
  ``{"array": NAME}`` / ``{"arrays": [NAME, ...]}`` naming entries of
  ``arrays.npz``. ``finetuned`` is null, or the fine-tuned network's ``base``
  record, ``history`` (one row per epoch) and ``validation`` (the held-out
  images).
- ``arrays.npz``: numbers only, read with ``allow_pickle=False``: the estimator's
  (``estimator/coef_``, ``estimator/coefs_/0``, ...) and, for a fine-tuned
  classifier, the trained tensors of its network as ``network/<state-dict key>``.

Loading builds a ``LogisticRegression`` or ``MLPClassifier`` with the saved
hyper-parameters and fitted attributes, and checks it on a zero vector; a
crafted file can make a wrong classifier, or be refused, but never runs code.
Version 1 was a pickle, which runs whatever code it names when loaded and
imports classes by module path; it loads only with ``allow_pickle`` (the
``--allow-pickle`` option), with the modules that moved since mapped to their
new places.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pixclust.atomic import atomic_path
from pixclust.errors import UsageError
from pixclust.labelling.classifier import TrainedClassifier

if TYPE_CHECKING:
    from pixclust.labelling.finetune import FinetunedNetwork

FORMAT = "pixclust-classifier"
FORMAT_VERSION = 2
JSON_MEMBER = "classifier.json"
ARRAYS_MEMBER = "arrays.npz"
NETWORK_PREFIX = "network/"
# What predict and predict_proba read of each estimator pixclust trains, besides classes_.
FITTED = {
    "LogisticRegression": ("coef_", "intercept_", "n_features_in_"),
    "MLPClassifier": ("coefs_", "intercepts_", "n_features_in_", "n_layers_", "n_outputs_", "out_activation_"),
}
# Where the classes a version-1 pickle names live since the package was split into subpackages.
MOVED_MODULES = {
    "pixclust.classifier": "pixclust.labelling.classifier",
    "pixclust.finetune": "pixclust.labelling.finetune",
}
# A truncated, altered or hand-made file; zipfile answers an encrypted member with RuntimeError and an
# unknown compression with NotImplementedError.
_MALFORMED = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    RuntimeError,
    NotImplementedError,
)


def save_classifier(classifier: TrainedClassifier, path: str | Path) -> None:
    """Write the classifier file (format in the module docstring) atomically."""
    arrays: dict[str, np.ndarray] = {}
    record = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "classes": classifier.classes,
        "head": classifier.head,
        "params": classifier.params,
        "cv_f1": classifier.cv_f1,
        "search": classifier.search,
        "class_counts": classifier.class_counts,
        "embedding_model": classifier.embedding_model,
        "estimator": _estimator_record(classifier.estimator, arrays),
        "finetuned": _finetuned_record(classifier.finetuned, arrays),
    }
    npz = io.BytesIO()
    np.savez(npz, **arrays)
    text = json.dumps(record, indent=1)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr(JSON_MEMBER, text, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr(ARRAYS_MEMBER, npz.getvalue())


def check_replaceable(path: str | Path) -> None:
    """Refuse a ``train --out`` that would replace anything but a classifier file ``pixclust train`` wrote.

    Checked before training, so a slip of the keyboard (``--out labels.csv``, ``--out photo.jpg``)
    costs one line rather than the user's file.
    """
    target = Path(path)
    if not os.path.lexists(target):
        return
    refusal = UsageError(
        f"--out {target} exists and is not a classifier made by 'pixclust train'; choose another name, or move it away"
    )
    if target.is_symlink() or not target.is_file():
        raise refusal
    try:
        with zipfile.ZipFile(target) as archive:
            record = json.loads(archive.read(JSON_MEMBER))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        raise refusal from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise refusal


def load_classifier(path: str | Path, *, allow_pickle: bool = False) -> TrainedClassifier:
    """The classifier a file holds; a version-1 pickle only with ``allow_pickle``, since loading it can run code."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UsageError(
            f"cannot read the classifier {path} ({error.strerror}); give a file made by 'pixclust train'"
        ) from error
    # pickle.dumps (protocol 2 and later) starts with the PROTO opcode.
    if data[:1] == pickle.PROTO:
        return _load_pickle(path, data, allow_pickle)
    if not data.startswith(b"PK\x03\x04"):
        raise UsageError(f"{path} is not a classifier made by 'pixclust train'")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            record = json.loads(archive.read(JSON_MEMBER))
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise UsageError(f"{path} is not a classifier made by 'pixclust train'")
            _check_version(path, record.get("version"))
            with np.load(io.BytesIO(archive.read(ARRAYS_MEMBER)), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        return _classifier(record, arrays)
    except _MALFORMED as error:
        detail = f"{type(error).__name__}: {str(error).strip()}".splitlines()[0][:200]
        raise UsageError(
            f"{path} is a damaged or altered classifier file ({detail}); train it again with 'pixclust train'"
        ) from error


def _check_version(path: str | Path, version: Any) -> None:
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UsageError(
            f"{path} was saved by a newer pixclust (classifier format {version}; this one reads {FORMAT_VERSION}); "
            "upgrade pixclust"
        )
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version!r} is not {FORMAT_VERSION}")


def _estimator_record(estimator: Any, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The estimator's type, hyper-parameters and fitted attributes; its arrays go into ``arrays``."""
    kind = type(estimator).__name__
    if kind not in FITTED:
        raise ValueError(f"a classifier file holds a {' or '.join(FITTED)}, not a {kind}")
    fitted: dict[str, Any] = {}
    for name in FITTED[kind]:
        value = getattr(estimator, name)
        if isinstance(value, np.ndarray):
            arrays[f"estimator/{name}"] = value
            fitted[name] = {"array": f"estimator/{name}"}
        elif isinstance(value, list):
            names = [f"estimator/{name}/{i}" for i in range(len(value))]
            arrays.update(zip(names, value, strict=True))
            fitted[name] = {"arrays": names}
        else:
            fitted[name] = value
    return {"type": kind, "params": estimator.get_params(), "fitted": fitted}


def _finetuned_record(finetuned: FinetunedNetwork | None, arrays: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """The fine-tuned network's record; its trained tensors go into ``arrays``."""
    if finetuned is None:
        return None
    arrays.update({NETWORK_PREFIX + key: value for key, value in finetuned.trained.items()})
    return {"base": finetuned.base, "history": finetuned.history, "validation": finetuned.validation}


def _classifier(record: dict[str, Any], arrays: dict[str, np.ndarray]) -> TrainedClassifier:
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise ValueError(f"array {name} holds {array.dtype}, not numbers")
    classes = _typed(record, "classes", list)
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(name, str) for name in classes):
        raise ValueError("classes is not a list of two or more distinct names")
    return TrainedClassifier(
        estimator=_estimator(_typed(record, "estimator", dict), classes, arrays),
        classes=classes,
        embedding_model=_typed(record, "embedding_model", dict),
        head=_typed(record, "head", str),
        params=_typed(record, "params", dict),
        cv_f1=float(_typed(record, "cv_f1", (int, float))),
        search=_typed(record, "search", list),
        class_counts=_typed(record, "class_counts", dict),
        finetuned=_finetuned(_typed(record, "finetuned", (dict, type(None))), arrays),
    )


def _typed(record: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = record[key]
    if not isinstance(value, kind):
        raise TypeError(f"{key} is a {type(value).__name__}")
    return value


def _estimator(record: dict[str, Any], classes: list[str], arrays: dict[str, np.ndarray]) -> Any:
    """The saved scikit-learn estimator, rebuilt and checked to give one probability per class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import LabelBinarizer

    kind = _typed(record, "type", str)
    if kind not in FITTED:
        raise ValueError(f"estimator type {kind!r} is not one pixclust saves")
    estimator_type = {"LogisticRegression": LogisticRegression, "MLPClassifier": MLPClassifier}[kind]
    # Hyper-parameters the installed scikit-learn does not know (renamed or dropped since the file was
    # written) are left out: prediction reads the fitted attributes.
    known = estimator_type().get_params()
    estimator = estimator_type(**{key: value for key, value in _typed(record, "params", dict).items() if key in known})
    fitted = _typed(record, "fitted", dict)
    for name in FITTED[kind]:
        setattr(estimator, name, _fitted_value(fitted[name], arrays))
    if kind == "MLPClassifier":
        # predict maps outputs to classes through the binarizer fit() makes from the labels; fitted on the
        # class names it is the same one.
        estimator._label_binarizer = LabelBinarizer().fit(classes)
        estimator.classes_ = estimator._label_binarizer.classes_
    else:
        # What fit() keeps: np.unique of the object-dtype labels train_classifier passes.
        estimator.classes_ = np.asarray(classes, dtype=object)
    width = estimator.n_features_in_
    # Every input feature has at least one weight, which bounds the check's zero vector by the file's size.
    if not isinstance(width, int) or not 0 < width <= sum(array.size for array in arrays.values()):
        raise ValueError(f"n_features_in_ {width!r} does not fit the saved weights")
    probabilities = estimator.predict_proba(np.zeros((1, width)))
    if probabilities.shape != (1, len(classes)):
        raise ValueError(f"the estimator gives {probabilities.shape[-1]} probabilities for {len(classes)} classes")
    return estimator


def _fitted_value(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        return arrays[value["array"]] if "array" in value else [arrays[name] for name in value["arrays"]]
    if not isinstance(value, (int, str)):
        raise TypeError(f"fitted value {value!r} is neither a number, a name nor an array")
    return value


def _finetuned(record: dict[str, Any] | None, arrays: dict[str, np.ndarray]) -> FinetunedNetwork | None:
    if record is None:
        return None
    from pixclust.labelling.finetune import FinetunedNetwork

    trained = {
        name.removeprefix(NETWORK_PREFIX): array for name, array in arrays.items() if name.startswith(NETWORK_PREFIX)
    }
    return FinetunedNetwork(
        base=_typed(record, "base", dict),
        trained=trained,
        history=_typed(record, "history", list),
        validation=_typed(record, "validation", list),
    )


class _RenamingUnpickler(pickle.Unpickler):
    """Reads version-1 files, whose classes lived in modules that have moved since."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def _load_pickle(path: str | Path, data: bytes, allow_pickle: bool) -> TrainedClassifier:
    if not allow_pickle:
        raise UsageError(
            f"{path} is a classifier saved by an older pixclust as a pickle, which can run code when loaded; "
            "if you made it, load it with --allow-pickle"
        )
    try:
        record = _RenamingUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise UsageError(f"{path} is not a classifier made by 'pixclust train' ({type(error).__name__})") from error
    if not isinstance(record, dict) or not isinstance(record.get("classifier"), TrainedClassifier):
        raise UsageError(f"{path} is not a classifier made by 'pixclust train'")
    return record["classifier"]
