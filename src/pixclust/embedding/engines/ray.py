"""Embedding on a Ray cluster: a pool of actors, sized to the cluster's nodes, embeds batches of paths.

Each actor loads the model once (``extractor.load_extractor``, the same call as
this process) and embeds its batches with the local engine's own
:class:`~pixclust.embedding.embedder.Embedder` (decoding in the actor), so the vectors
are those of ``--engine local``. Results stream back to this process as
:class:`~pixclust.embedding.embedder.ExtractedBatch` objects, where ``extraction.embed``
saves them to ``embeddings.partial/`` shards as they arrive: a stopped or killed
run keeps what was saved and the next run embeds only the rest.

The pool is driven here with Ray Core rather than Ray Data, which this engine
used first: Ray Data waits without end for an actor no node can host, and for a
node that never comes back, where pixclust must stop with a line that says why.
Here every wait is bounded (``RaySettings.wait_s``), an actor lost with its node
is replaced and its batches are handed to the others, and a pool left with no
actor for that long stops the run.

The actors read the image files by path, so every node must see the images
(and a ``--weights`` file) at the same path, e.g. on a shared file system;
only this process writes the run folder.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pixclust.embedding.embedder import Embedder, ExtractedBatch
from pixclust.embedding.engines import DEFAULT_RAY_WAIT_S
from pixclust.embedding.extractor import FeatureExtractor, load_extractor
from pixclust.embedding.files import SkippedFile
from pixclust.embedding.pixel_stats import IMAGE_STATS
from pixclust.embedding.record import RANDOM_WEIGHTS
from pixclust.embedding.store import file_digest
from pixclust.errors import ClusterUnavailableError, DecodeError, ModelUnavailableError, PixclustError, UsageError

# OpenVINO spreads one actor's network over the threads it is given; on this project's 2-core
# machine one 2-core actor embedded 510 digits in 8.1 s, two 1-core actors in 9.9 s.
MAX_DEFAULT_ACTOR_CPUS = 2
# Batches queued at each actor beyond the one it embeds, so that it never waits for this process between batches.
_QUEUED_PER_ACTOR = 1
# A batch whose actor dies this many times (its node lost each time, or a file that crashes the decoder) stops the run.
_DEATHS_PER_BATCH = 3
# How often the pool looks at the clock while nothing comes back.
_POLL_S = 1.0
# Tasks in flight per CPU of the cluster: one running, one queued, so no CPU waits for the driver.
_TASKS_PER_CPU = 2
# Files hashed per Ray task: enough that a task's cost (milliseconds) is small beside reading the files.
HASH_BATCH = 256
# Files a discovery task opens to read their first bytes (a few kB each).
EXAMINE_BATCH = 1024


@dataclass(frozen=True)
class RaySettings:
    """Where and how ``--engine ray`` runs.

    ``address`` is passed to ``ray.init`` (None: the cluster ``ray start``
    made on this machine, or ``RAY_ADDRESS``, else a Ray instance started
    here for the call). ``actor_cpus`` is the CPUs each actor asks for (None:
    up to ``MAX_DEFAULT_ACTOR_CPUS``, no more than the smallest node that can
    host an actor). ``wait_s``: how long the pool may go without an actor
    placed on a node before the run stops.
    """

    address: str | None = None
    actor_cpus: int | None = None
    wait_s: float = DEFAULT_RAY_WAIT_S


@dataclass(frozen=True)
class ActorPlan:
    """How many actors to start, and what each asks Ray for."""

    actors: int
    cpus: int
    gpus: int

    @property
    def threads(self) -> int:
        """The CPU threads an actor's network may use: as many as the CPUs it holds."""
        return max(1, self.cpus)


def plan_actors(nodes: Sequence[Mapping[str, float]], actor_cpus: int | None = None) -> ActorPlan:
    """The actor pool that fits the nodes (each node's total resources, as ``ray.nodes()`` gives them).

    With GPUs in the cluster: one actor per GPU, with a share of its node's
    CPUs. Otherwise actors of ``actor_cpus`` CPUs (default: at most
    ``MAX_DEFAULT_ACTOR_CPUS``, no more than the smallest node that has a CPU),
    as many as fit on each node. Raises :class:`UsageError` when no node can
    host one, so that the run stops at once instead of waiting for a node
    that cannot come.
    """
    gpu_nodes = [node for node in nodes if node.get("GPU", 0) >= 1]
    hosts = gpu_nodes or [node for node in nodes if node.get("CPU", 0) >= 1]
    if not hosts:
        raise UsageError(
            f"no node of the Ray cluster has a CPU or a GPU for an actor ({describe_nodes(nodes)}); "
            "start one with 'ray start --address=HEAD:PORT --num-cpus=N'"
        )
    # The CPUs every host can give each of its actors: a GPU node shares its CPUs among its GPUs' actors.
    fit = min(int(node.get("CPU", 0) // node.get("GPU", 1)) for node in hosts)
    if actor_cpus is None:
        cpus = min(MAX_DEFAULT_ACTOR_CPUS, fit)
    elif any(node.get("CPU", 0) >= actor_cpus for node in hosts):
        cpus = actor_cpus
    else:
        largest = max(int(node.get("CPU", 0)) for node in hosts)
        raise UsageError(
            f"--actor-cpus {actor_cpus}: no node of the Ray cluster has {actor_cpus} CPUs for an actor "
            f"({describe_nodes(nodes)}); use --actor-cpus {max(1, largest)} or start larger nodes"
        )
    if gpu_nodes:
        actors = sum(int(node["GPU"]) for node in gpu_nodes if node.get("CPU", 0) >= cpus)
        return ActorPlan(actors=actors, cpus=cpus, gpus=1)
    return ActorPlan(actors=sum(int(node["CPU"] // cpus) for node in hosts), cpus=cpus, gpus=0)


def describe_nodes(nodes: Sequence[Mapping[str, float]]) -> str:
    """The nodes by size: ``2 nodes of 1 CPU``, or ``3 nodes: 1 of 0 CPUs, 2 of 4 CPUs``."""
    if not nodes:
        return "no live node"
    sizes = Counter(
        _count(int(node.get("CPU", 0)), "CPU") + (f" and {_count(int(node['GPU']), 'GPU')}" if node.get("GPU") else "")
        for node in nodes
    )
    if len(sizes) == 1:
        return f"{_count(len(nodes), 'node')} of {next(iter(sizes))}"
    return f"{_count(len(nodes), 'node')}: " + ", ".join(f"{n} of {size}" for size, n in sorted(sizes.items()))


def _count(n: float, noun: str) -> str:
    return f"{n:g} {noun}" + ("" if n == 1 else "s")


def require_ray() -> ModuleType:
    """The ``ray`` module, or a UsageError saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise UsageError("--engine ray needs Ray, which is not installed; run: pip install 'pixclust[ray]'") from error
    return ray


class RayEmbedder(Embedder):
    """An :class:`Embedder` whose batches are computed by Ray actors instead of this process.

    The Ray instance is chosen by ``settings.address`` (see :class:`RaySettings`);
    one started here is shut down when the batches end, one that was already
    running is left alone, and the actors are removed either way.
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
        settings: RaySettings,
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
        self.settings = settings

    def iter_batches(self, paths: Sequence[str]) -> Iterator[ExtractedBatch]:
        """Yield results batch by batch as actors finish them (not in input order; ``indices`` say where)."""
        if not paths:
            return
        with ray_session(self.settings.address):
            plan = plan_actors(live_nodes(self.ray), self.settings.actor_cpus)
            batches = [
                range(start, min(start + self.batch_size, len(paths)))
                for start in range(0, len(paths), self.batch_size)
            ]
            pool = _ActorPool(self.ray, plan, self.actor_settings, self.settings.wait_s)
            try:
                for result in pool.embed(batches, paths):
                    yield _extracted_batch(result)
            finally:
                pool.close()


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[ModuleType]:
    """The ``ray`` module, joined to (or started for) the cluster at ``address``; a Ray started here stops on exit."""
    ray = require_ray()
    started_here = connect(ray, address)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def run_tasks(ray: ModuleType, calls: Sequence[Callable[[], Any]], wait_s: float) -> Iterator[tuple[int, Any]]:
    """(index, result) of each task as it finishes, with at most ``_TASKS_PER_CPU`` per CPU of the cluster in flight.

    ``calls`` submit one task each when called, so that a task is submitted only when there is room.
    A task's pixclust error (an unreadable file, say) is raised here as itself: one line for the user.
    Ray runs a task again when its node is lost; a cluster left with no CPU at all for ``wait_s``
    seconds (none joined, or every node lost) stops the run with :class:`ClusterUnavailableError`.
    """
    limit = max(1, _TASKS_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
    pending: dict[Any, int] = {}
    waiting = iter(enumerate(calls))
    no_cpu_since = None
    try:
        while True:
            while len(pending) < limit and (next_call := next(waiting, None)) is not None:
                index, call = next_call
                pending[call()] = index
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
            if ready:
                index = pending.pop(ready[0])
                yield index, _task_result(ray, ready[0])
                continue
            if ray.cluster_resources().get("CPU", 0) >= 1:
                no_cpu_since = None
            elif no_cpu_since is None:
                no_cpu_since = time.monotonic()
            elif time.monotonic() - no_cpu_since > wait_s:
                raise ClusterUnavailableError(
                    f"the Ray cluster has had no CPU for pixclust's tasks for {wait_s:g} s "
                    f"({describe_nodes(live_nodes(ray))}); start a node with CPUs, or wait longer with --ray-wait"
                )
    finally:
        for ref in pending:
            ray.cancel(ref)


def _task_result(ray: ModuleType, ref: Any) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, PixclustError):
            raise type(cause)(str(cause)) from None
        raise


def hash_on_ray(
    paths: Sequence[str], known: Mapping[tuple[str, int, int], str], wait_s: float
) -> Iterator[list[tuple[str, tuple[str, tuple[int, int]] | SkippedFile]]]:
    """Each file's content hash and (size, mtime), or why it cannot be used, by Ray tasks of
    ``HASH_BATCH`` files: a batch at a time, in the order the batches finish (Ray connected)."""
    ray = require_ray()
    # A task is sent only its own files' stored hashes; found through one index, not a scan per batch.
    known_by_path = {key[0]: (key, digest) for key, digest in known.items()}
    batches = [paths[start : start + HASH_BATCH] for start in range(0, len(paths), HASH_BATCH)]
    task = ray.remote(num_cpus=1)(_hash_batch)
    calls = [
        (lambda batch=batch: task.remote(batch, dict(known_by_path[path] for path in batch if path in known_by_path)))
        for batch in batches
    ]
    for _, results in run_tasks(ray, calls, wait_s):
        yield results


def examine_on_ray(paths: Sequence[str], wait_s: float) -> list[Path | SkippedFile | None]:
    """``discover.examine_files`` of every path, by Ray tasks of ``EXAMINE_BATCH`` files, in the order given."""
    from pixclust.embedding.discover import examine_files

    ray = require_ray()
    batches = [paths[start : start + EXAMINE_BATCH] for start in range(0, len(paths), EXAMINE_BATCH)]
    task = ray.remote(num_cpus=1)(examine_files)
    answers: list[list[Path | SkippedFile | None]] = [[] for _ in batches]
    for index, answer in run_tasks(ray, [(lambda batch=batch: task.remote(batch)) for batch in batches], wait_s):
        answers[index] = answer
    return [outcome for answer in answers for outcome in answer]


def _hash_batch(
    paths: Sequence[str], known: Mapping[tuple[str, int, int], str]
) -> list[tuple[str, tuple[str, tuple[int, int]] | SkippedFile]]:
    """Ray task: ``file_digest`` of each path, on the node that runs it."""
    return [(path, file_digest(path, known)) for path in paths]


def connect(ray: ModuleType, address: str | None) -> bool:
    """Join or start Ray; True when this call started it (so it is this call's to shut down)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except UnicodeEncodeError as error:
        # Ray records this process's command line with the job and cannot encode a name that is not UTF-8.
        raise UsageError(
            "Ray cannot start a job whose command line holds a name that is not UTF-8; give the folder that holds "
            "that file or folder instead (names inside folders are fine)"
        ) from error
    except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as error:
        if _refused_token(error):
            raise UsageError(
                f"the Ray cluster at --address {address} refused this machine's token; copy the head node's "
                "~/.ray/auth_token here (or set RAY_AUTH_TOKEN to its contents)"
            ) from error
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(
            f"cannot use the Ray cluster at --address {address} ({reason}); "
            "start one with 'ray start --head' or fix --address"
        ) from error
    return True


def _refused_token(error: BaseException) -> bool:
    """Whether Ray's error, or one it was raised from, is the cluster refusing this machine's token.

    Ray 2.60 raises a ConnectionError from a RuntimeError that quotes the
    authentication error's traceback, so its name is looked for in the text too.
    """
    seen: BaseException | None = error
    while seen is not None:
        if type(seen).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def live_nodes(ray: ModuleType) -> list[dict[str, float]]:
    """Each live node's total resources."""
    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


class _ActorPool:
    """The actors embedding one call's images, kept at ``plan.actors`` while the cluster has room for them.

    An actor is *placed* once it answers on a node; it is *ready* once it has
    loaded the model there. Batches go to ready actors, ``1 + _QUEUED_PER_ACTOR``
    at a time. An actor that dies (its node lost, its process killed) takes no
    vectors with it: its batches go back to the queue and a new actor is asked
    for. While no actor is placed the clock runs, and after ``wait_s`` the run
    stops with :class:`ClusterUnavailableError`.
    """

    def __init__(self, ray: ModuleType, plan: ActorPlan, actor_settings: dict[str, Any], wait_s: float) -> None:
        self.ray = ray
        self.plan = plan
        self.wait_s = wait_s
        self.actor_class = ray.remote(_EmbeddingActor).options(
            num_cpus=plan.cpus,
            num_gpus=plan.gpus,
            scheduling_strategy="SPREAD",
            max_restarts=0,
        )
        self.actor_settings = {**actor_settings, "threads": plan.threads}
        self.actors: list[Any] = []
        self.placing: dict[Any, Any] = {}  # the actor's first answer -> actor
        self.loading: dict[Any, Any] = {}  # its answer once the model is loaded -> actor
        self.ready: set[Any] = set()
        self.ever_placed = False
        self.deaths_while_loading = 0
        # What an answer raises when its actor, or the node holding the answer, is gone.
        self.lost_errors = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)

    def embed(self, batches: Sequence[range], paths: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """Each batch's result, in the order they are finished."""
        queue = deque(range(len(batches)))
        in_flight: dict[Any, tuple[Any, int]] = {}  # result -> (actor, batch number)
        deaths: Counter[int] = Counter()
        for _ in range(min(self.plan.actors, len(batches))):
            self._start_actor()
        no_actor_since = time.monotonic()
        while queue or in_flight:
            self._hand_out(queue, in_flight, batches, paths)
            waiting = [*in_flight, *self.placing, *self.loading]
            done, _ = self.ray.wait(waiting, num_returns=1, timeout=_POLL_S)
            for answer in done:
                if answer in self.placing:
                    self._placed(answer)
                elif answer in self.loading:
                    self._loaded(answer)
                else:
                    actor, batch = in_flight.pop(answer)
                    try:
                        result = self.ray.get(answer)
                    except self.lost_errors as error:
                        deaths[batch] += 1
                        if deaths[batch] >= _DEATHS_PER_BATCH:
                            first = paths[batches[batch].start]
                            raise ClusterUnavailableError(
                                f"Ray actors died {deaths[batch]} times embedding the batch that starts with {first} "
                                f"({_first_line(error)}); the vectors made so far are saved"
                            ) from error
                        queue.appendleft(batch)
                        self._lost(actor)
                        continue
                    yield result
            if self.ready or self.loading:
                no_actor_since = time.monotonic()
            elif time.monotonic() - no_actor_since > self.wait_s:
                raise ClusterUnavailableError(self._no_room_message())

    def close(self) -> None:
        """Remove every actor, placed or not, so that none holds the cluster's CPUs after the call."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors.clear()

    def _start_actor(self) -> None:
        actor = self.actor_class.remote(**self.actor_settings)
        self.actors.append(actor)
        self.placing[actor.node.remote()] = actor

    def _placed(self, answer: Any) -> None:
        actor = self.placing.pop(answer)
        try:
            self.ray.get(answer)
        except self.lost_errors:
            self._lost(actor)
            return
        self.ever_placed = True
        self.loading[actor.start.remote()] = actor

    def _loaded(self, answer: Any) -> None:
        actor = self.loading.pop(answer)
        try:
            unusable = self.ray.get(answer)
        except self.lost_errors as error:
            self.deaths_while_loading += 1
            if not self.ready and self.deaths_while_loading >= _DEATHS_PER_BATCH:
                # Every actor dies as it loads the model (out of memory, say): replacing them would go on for ever.
                raise ClusterUnavailableError(
                    f"Ray actors died {self.deaths_while_loading} times loading the model ({_first_line(error)}); "
                    "check the nodes' free memory and their logs ('ray logs')"
                ) from error
            self._lost(actor)
            return
        if unusable is not None:
            raise ModelUnavailableError(unusable)
        self.ready.add(actor)

    def _hand_out(
        self, queue: deque[int], in_flight: dict[Any, tuple[Any, int]], batches: Sequence[range], paths: Sequence[str]
    ) -> None:
        load = Counter(actor for actor, _ in in_flight.values())
        for actor in list(self.ready):
            while queue and load[actor] <= _QUEUED_PER_ACTOR:
                batch = queue.popleft()
                rows = batches[batch]
                in_flight[actor.embed.remote(np.arange(rows.start, rows.stop), list(paths[rows.start : rows.stop]))] = (
                    actor,
                    batch,
                )
                load[actor] += 1

    def _lost(self, actor: Any) -> None:
        """Forget a dead actor (once, whichever of its answers says so first) and ask for another in its place."""
        if actor not in self.actors:
            return
        self.actors.remove(actor)
        self.ready.discard(actor)
        self._start_actor()

    def _no_room_message(self) -> str:
        nodes = live_nodes(self.ray)
        free = self.ray.available_resources().get("CPU", 0)
        has = f"the cluster has {describe_nodes(nodes)}, {_count(free, 'CPU')} free"
        if not self.ever_placed:
            return (
                f"no Ray actor could be placed in {self.wait_s:g} s: each asks for {_count(self.plan.cpus, 'CPU')}"
                + (f" and {_count(self.plan.gpus, 'GPU')}" if self.plan.gpus else "")
                + f", and {has}; free some, add nodes, or wait longer with --ray-wait"
            )
        return (
            f"the Ray cluster lost the nodes running pixclust's actors and had no room for one for {self.wait_s:g} s "
            f"({has}); the vectors made so far are saved: run the same command again once the cluster has nodes"
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _EmbeddingActor:
    """Holds one loaded model; turns a batch of (index, path) rows into vectors or decode failures.

    Loading waits for ``start`` so that the pool can tell an actor that has no
    node yet from one that is loading its model (which can take a minute the
    first time a node exports the network).
    """

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.embedder: Embedder | None = None

    def node(self) -> str:
        return socket.gethostname()

    def start(self) -> str | None:
        """Load the model; None, or the line that says why it cannot be used on this node.

        The line comes back as a value rather than an exception, which would reach
        the driver as Ray's traceback of this actor.
        """
        settings = self.settings
        try:
            extractor = load_extractor(
                settings["model"],
                weights=settings["weights"],
                runtime=settings["runtime"],
                precision=settings["precision"],
                threads=settings["threads"],
            )
            if extractor.model_id != settings["model_id"]:
                # Another timm, weights package or pixclust on this node would store different vectors under the same id.
                raise ModelUnavailableError(
                    f"model '{settings['model']}' is {extractor.model_id} there, not {settings['model_id']} "
                    "as on the driver; install the same pixclust, timm and weights on every node"
                )
        except PixclustError as error:
            return f"Ray node {socket.gethostname()}: {error}"
        # Decoding in the actor itself: the pool is sized to the cluster's cores, and decode
        # processes forked inside each actor would compete with it for them.
        self.embedder = Embedder(
            extractor, batch_size=settings["batch_size"], num_workers=0, max_pixels=settings["max_pixels"]
        )
        return None

    def embed(self, indices: np.ndarray, paths: list[str]) -> dict[str, np.ndarray]:
        assert self.embedder is not None, "start() comes first"
        n = len(paths)
        vectors = np.zeros((n, self.embedder.extractor.dim), dtype=np.float32)
        sizes = np.zeros((n, 2), dtype=np.int32)
        stats = np.zeros((n, len(IMAGE_STATS)), dtype=np.float32)
        reasons, details = [""] * n, [""] * n
        for extracted in self.embedder.iter_batches(paths):
            vectors[extracted.indices] = extracted.vectors
            sizes[extracted.indices] = extracted.image_sizes
            stats[extracted.indices] = extracted.image_stats
            for row, error in extracted.failures:
                reasons[row], details[row] = error.reason, error.detail
        return {
            "index": indices,
            "vector": vectors,
            "size": sizes,
            "stats": stats,
            # An empty reason marks a vector; anything else is why the file could not be used.
            "reason": np.array(reasons, dtype=object),
            "detail": np.array(details, dtype=object),
        }


def _extracted_batch(result: dict[str, np.ndarray]) -> ExtractedBatch:
    reasons = result["reason"]
    ok = np.array([reason == "" for reason in reasons], dtype=bool)
    return ExtractedBatch(
        indices=result["index"][ok].astype(np.int64),
        vectors=np.asarray(result["vector"][ok], dtype=np.float32),
        image_sizes=result["size"][ok].astype(np.int32),
        image_stats=result["stats"][ok].astype(np.float32),
        failures=[
            (int(index), DecodeError(str(reason), str(detail)))
            for index, reason, detail in zip(result["index"][~ok], reasons[~ok], result["detail"][~ok], strict=True)
        ],
    )
