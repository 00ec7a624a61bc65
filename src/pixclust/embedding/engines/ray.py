"""Embedding on a Ray cluster: Ray Data feeds batches of paths to a pool of actors.

Each actor loads the model once (``extractor.load_extractor``, the same call as
this process) and embeds its batches with the local engine's own
:class:`~pixclust.embedding.embedder.Embedder` (decoding in the actor), so the vectors
are those of ``--engine local``. Results stream back to this process as
:class:`~pixclust.embedding.embedder.ExtractedBatch` objects, where ``extraction.embed``
saves them to ``embeddings.partial/`` shards as they arrive: a killed run
keeps what was saved and the next run embeds only the rest.

The actors read the image files by path, so every node must see the images
(and a ``--weights`` file) at the same path, e.g. on a shared file system;
only this process writes the run folder.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa

from pixclust.embedding.embedder import Embedder, ExtractedBatch
from pixclust.embedding.extractor import FeatureExtractor, load_extractor
from pixclust.embedding.record import RANDOM_WEIGHTS
from pixclust.errors import DecodeError, ModelUnavailableError, PixclustError, UsageError
from pixclust.names import escape_name, unescape_name

# Ray Data schedules and retries whole blocks; a few thousand keeps the driver's bookkeeping
# small at millions of images while every actor still gets many blocks to balance the load.
_MAX_BLOCKS = 4096
# OpenVINO spreads one actor's network over all of a node's cores anyway; on this project's 2-core
# machine one 2-core actor embedded 510 digits in 8.1 s, two 1-core actors in 9.9 s.
_CPUS_PER_ACTOR = 2
# The reason an actor gives for every row when it could not load the model; its detail is the error's line.
_ACTOR_UNUSABLE = "model unusable on a Ray node"


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or a UsageError saying how to install it."""
    try:
        import ray
        import ray.data  # Ray without its [data] extra lacks it.
    except ImportError as error:
        raise UsageError(
            "--engine ray needs Ray Data, which is not installed; run: pip install 'pixclust[ray]'"
        ) from error
    return ray


class RayEmbedder(Embedder):
    """An :class:`Embedder` whose batches are computed by Ray actors instead of this process.

    ``address`` is passed to ``ray.init``: ``None`` joins the cluster that
    ``ray start`` made on this machine (or ``RAY_ADDRESS``) and otherwise
    starts a Ray instance here for this call; ``"ray://host:10001"`` or
    ``"host:6379"`` joins a remote one. A Ray instance started here is shut
    down when the batches end; one that was already running is left alone.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        model: str,
        weights: str | Path | None,
        runtime: str,
        precision: str,
        batch_size: int,
        max_pixels: int,
        address: str | None,
    ) -> None:
        super().__init__(extractor, batch_size=batch_size, max_pixels=max_pixels)
        self.ray = require_ray()
        # Actors do not share this process's working directory.
        if weights is not None and weights != RANDOM_WEIGHTS:
            weights = str(Path(weights).resolve())
        self.actor_settings = {
            "model": model,
            "weights": weights,
            "runtime": runtime,
            "precision": precision,
            "batch_size": batch_size,
            "max_pixels": max_pixels,
            "model_id": extractor.model_id,
        }
        self.address = address

    def iter_batches(self, paths: Sequence[str]) -> Iterator[ExtractedBatch]:
        """Yield results batch by batch as actors finish them (not in input order; ``indices`` say where)."""
        if not paths:
            return
        started_here = _connect(self.ray, self.address)
        try:
            rows_per_block = max(self.batch_size, math.ceil(len(paths) / _MAX_BLOCKS))
            blocks = [
                pa.table(
                    {
                        "index": pa.array(range(start, min(start + rows_per_block, len(paths))), pa.int64()),
                        # Arrow strings must be UTF-8; a name that is not travels escaped (pixclust.names).
                        "path": pa.array(
                            [escape_name(path) for path in paths[start : start + rows_per_block]], pa.string()
                        ),
                    }
                )
                for start in range(0, len(paths), rows_per_block)
            ]
            resources = self.ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            cpus_per_actor = min(_CPUS_PER_ACTOR, resources.get("CPU", 1))
            actors = gpus or max(1, int(resources.get("CPU", 1) // cpus_per_actor))
            dataset = _map_batches_on_actors(
                self.ray.data.from_arrow(blocks),
                _EmbeddingActor,
                batch_size=self.batch_size,
                actors=min(actors, len(blocks)),
                num_cpus=cpus_per_actor,
                num_gpus=1 if gpus else 0,
                constructor_kwargs=self.actor_settings,
            )
            for result in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                yield _extracted_batch(result)
        finally:
            if started_here:
                self.ray.shutdown()


def _connect(ray: ModuleType, address: str | None) -> bool:
    """Join or start Ray; True when this call started it (so it is this call's to shut down)."""
    context = ray.data.DataContext.get_current()
    # pixclust shows its own progress bar, counted in images; Ray Data would add its own and warn that it is off.
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(
            f"cannot use the Ray cluster at --address {address} ({reason}); "
            "start one with 'ray start --head' or fix --address"
        ) from error
    return True


def _map_batches_on_actors(
    dataset: Any,
    actor_class: type,
    *,
    batch_size: int,
    actors: int,
    num_cpus: float,
    num_gpus: float,
    constructor_kwargs: dict[str, Any],
) -> Any:
    """``dataset.map_batches`` on a pool of ``actors`` stateful actors.

    The one Ray call whose signature keeps changing (Ray 1.x took
    ``compute="actors"``, 2.x an ``ActorPoolStrategy``, 2.9 added
    ``concurrency=``, which the pinned 2.60 deprecates in favour of
    ``ActorPoolStrategy(min_size, max_size, initial_size)`` again); written for
    the version the ``ray`` extra pins.
    """
    import ray.data

    return dataset.map_batches(
        actor_class,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        fn_constructor_kwargs=constructor_kwargs,
    )


class _EmbeddingActor:
    """Holds one loaded model; turns a batch of (index, path) rows into vectors or decode failures."""

    def __init__(
        self,
        *,
        model: str,
        weights: str | None,
        runtime: str,
        precision: str,
        batch_size: int,
        max_pixels: int,
        model_id: str,
    ) -> None:
        # An error raised here would kill the actor and reach the driver as Ray's traceback of it;
        # kept instead, it comes back with the first batch and the driver raises it as the one line it is.
        self.unusable: str | None = None
        try:
            extractor = load_extractor(model, weights=weights, runtime=runtime, precision=precision)
            if extractor.model_id != model_id:
                # Another timm, weights package or pixclust on this node would store different vectors under the same id.
                raise ModelUnavailableError(
                    f"model '{model}' is {extractor.model_id} there, not {model_id} as on the driver; "
                    "install the same pixclust, timm and weights on every node"
                )
        except PixclustError as error:
            self.unusable = f"Ray node {socket.gethostname()}: {error}"
            return
        # Decoding in the actor itself: the pool is sized to the cluster's cores, and decode
        # processes forked inside each actor would compete with it for them.
        self.embedder = Embedder(extractor, batch_size=batch_size, num_workers=0, max_pixels=max_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [unescape_name(str(path)) for path in batch["path"]]
        n = len(paths)
        if self.unusable is not None:
            return {
                "index": np.asarray(batch["index"], dtype=np.int64),
                "vector": np.zeros((n, 0), dtype=np.float32),
                "width": np.zeros(n, dtype=np.int32),
                "height": np.zeros(n, dtype=np.int32),
                "reason": np.array([_ACTOR_UNUSABLE] * n, dtype=object),
                "detail": np.array([self.unusable] * n, dtype=object),
            }
        vectors = np.zeros((n, self.embedder.extractor.dim), dtype=np.float32)
        sizes = np.zeros((n, 2), dtype=np.int32)
        reasons, details = [""] * n, [""] * n
        for extracted in self.embedder.iter_batches(paths):
            vectors[extracted.indices] = extracted.vectors
            sizes[extracted.indices] = extracted.image_sizes
            for row, error in extracted.failures:
                reasons[row], details[row] = error.reason, error.detail
        return {
            "index": np.asarray(batch["index"], dtype=np.int64),
            "vector": vectors,
            "width": sizes[:, 0],
            "height": sizes[:, 1],
            # An empty reason marks a vector; anything else is why the file could not be used.
            "reason": np.array(reasons, dtype=object),
            "detail": np.array(details, dtype=object),
        }


def _extracted_batch(result: dict[str, np.ndarray]) -> ExtractedBatch:
    reasons = result["reason"]
    if len(reasons) and reasons[0] == _ACTOR_UNUSABLE:
        raise ModelUnavailableError(str(result["detail"][0]))
    ok = np.array([reason == "" for reason in reasons], dtype=bool)
    return ExtractedBatch(
        indices=result["index"][ok].astype(np.int64),
        vectors=np.asarray(result["vector"][ok], dtype=np.float32),
        image_sizes=np.column_stack([result["width"][ok], result["height"][ok]]).astype(np.int32),
        failures=[
            (int(index), DecodeError(str(reason), str(detail)))
            for index, reason, detail in zip(result["index"][~ok], reasons[~ok], result["detail"][~ok], strict=True)
        ],
    )
