"""Where a command's embeddings come from: a pixclust run folder, or someone else's ``embeddings.npy``.

Every search and labelling command takes ``--in SOURCE``. A run folder gives
its stored vectors and the model record from ``run.json``, so new images
(queries, references, images to predict) can be embedded by the very same
model. A precomputed ``embeddings.npy`` (N x d) comes with an optional id
list (a CSV, one id per row); without it the ids are the row numbers.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pixclust.embedding.discover import discover_images
from pixclust.embedding.embedder import Embedder
from pixclust.embedding.extractor import FeatureExtractor, load_extractor
from pixclust.embedding.files import SkippedFile
from pixclust.embedding.record import PRECOMPUTED, ModelRecord, WeightsSource
from pixclust.embedding.store import EmbeddingStore
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.runs.folder import EMBEDDINGS_FILE, RUN_JSON
from pixclust.runs.record import RunRecord

_ID_COLUMNS = ("id", "path", "file", "filename", "image")


def open_embeddings(source: str | Path | Embeddings, *, ids: str | Path | None = None) -> Embeddings:
    """The embeddings in a run folder, or in an ``.npy`` file with an optional id list; ``Embeddings`` as they are."""
    if isinstance(source, Embeddings):
        return source
    path = Path(source)
    if path.is_dir():
        if ids is not None:
            raise UsageError(f"--ids is for an embeddings.npy file, not the run folder {path}; drop --ids")
        return _open_run(path)
    if path.suffix == ".npy" and path.is_file():
        return load_precomputed(path, ids=ids)
    raise UsageError(
        f"--in {source}: not a pixclust run folder nor an .npy file; give RUN (from 'pixclust cluster') or embeddings.npy"
    )


def _open_run(run_dir: Path) -> Embeddings:
    if not (run_dir / EMBEDDINGS_FILE).is_file():
        raise UsageError(f"{run_dir} holds no {EMBEDDINGS_FILE}; run 'pixclust cluster FOLDER --out {run_dir}' first")
    embeddings = EmbeddingStore(run_dir).load()
    try:
        embeddings.model = ModelRecord.from_dict(RunRecord.read(run_dir / RUN_JSON).model)
    except UsageError:
        # The vectors are still usable; only embedding new images with the same model is not.
        embeddings.model = None
    return embeddings


def load_precomputed(npy: str | Path, *, ids: str | Path | None = None) -> Embeddings:
    """An N x d ``.npy`` matrix as :class:`Embeddings`; ids from a CSV (one per row) or the row numbers."""
    try:
        vectors = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {npy} as a numpy array ({error}); save it with numpy.save") from error
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number) or len(vectors) == 0:
        raise UsageError(f"{npy} holds an array of shape {vectors.shape}; expected N x d numbers with N >= 1")
    n = len(vectors)
    names = read_id_list(Path(ids)) if ids is not None else [str(row) for row in range(n)]
    if len(names) != n:
        raise UsageError(f"--ids {ids} lists {len(names)} ids but {npy} has {n} rows; give one id per row")
    if len(set(names)) != n:
        raise UsageError(f"--ids {ids} repeats some ids; every row needs its own id")
    return Embeddings(
        paths=names,
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        # Unknown: only vectors were given, so exact duplicates can only be found by equal vectors.
        content_hashes=[""] * n,
        file_sizes=np.zeros(n, np.int64),
        mtimes_ns=np.zeros(n, np.int64),
        image_sizes=np.zeros((n, 2), np.int32),
        model_id=f"{PRECOMPUTED}:{Path(npy).name}",
        model=ModelRecord(model=None, weights=WeightsSource(PRECOMPUTED), file=str(Path(npy).resolve())),
    )


def read_id_list(path: Path) -> list[str]:
    """Ids from a CSV: the id-like column of a header (id, path, file...), else the first column."""
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = [row for row in csv.reader(stream) if row]
    except OSError as error:
        raise UsageError(
            f"cannot read the id list {path} ({error.strerror}); give a CSV with one id per row"
        ) from error
    if not rows:
        raise UsageError(f"the id list {path} is empty; give a CSV with one id per row")
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in _ID_COLUMNS if name in header), None)
    body = rows[1:] if column is not None else rows
    return [row[column or 0].strip() for row in body]


def extractor_for(record: ModelRecord | None) -> FeatureExtractor:
    """Load the model a record names and check it still makes the same vectors (same model id)."""
    if record is None or not record.made_by_pixclust:
        raise UsageError(
            "these embeddings were not made by pixclust, so new images cannot be embedded like them; "
            "use ids of rows already in the embeddings, or cluster the images with pixclust first"
        )
    extractor = load_extractor(record.model, weights=record.weights.weights_option())
    expected = record.model_id
    if expected and extractor.model_id != expected:
        raise UsageError(
            f"model {record.model} now gives model id {extractor.model_id}, not the recorded {expected} "
            "(weights or preprocessing changed); re-run 'pixclust cluster' to re-embed"
        )
    return extractor


def embed_images(
    sources: Sequence[str | Path], extractor: FeatureExtractor
) -> tuple[list[str], np.ndarray, list[SkippedFile]]:
    """Vectors for image files and every image under folders, without a store (queries, references, new images)."""
    paths: list[str] = []
    skipped: list[SkippedFile] = []
    for source in sources:
        if not Path(source).exists():
            raise UsageError(f"{source} does not exist; give image files or folders of images")
        found = discover_images(source)
        paths.extend(str(path) for path in found.files)
        skipped.extend(found.skipped)
    vectors = np.empty((len(paths), extractor.dim), np.float32)
    kept = np.zeros(len(paths), bool)
    for batch in Embedder(extractor).iter_batches(paths):
        vectors[batch.indices] = batch.vectors
        kept[batch.indices] = True
        skipped.extend(SkippedFile(paths[index], error.reason, error.detail) for index, error in batch.failures)
    return [path for path, ok in zip(paths, kept, strict=True) if ok], vectors[kept], skipped
