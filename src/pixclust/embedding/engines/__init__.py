"""Where images are embedded: in this process (``local``, ``embedder.Embedder``) or by Ray actors (``ray``).

Both engines yield the same :class:`pixclust.embedding.embedder.ExtractedBatch` objects,
so ``extraction.embed`` hashes, reuses stored vectors, writes shards to
``embeddings.partial/`` and assembles the result the same way whichever ran.
"""

from __future__ import annotations

from numbers import Integral, Real

from pixclust.errors import UsageError

ENGINES = ("local", "ray")
# How long --engine ray waits with no actor placed on a node (none yet, or all lost with their nodes) before it stops.
DEFAULT_RAY_WAIT_S = 120


def check_engine(
    engine: str,
    address: str | None,
    num_workers: int | None = None,
    *,
    actor_cpus: int | None = None,
    ray_wait: float | None = None,
) -> None:
    """Refuse an unknown engine, options that do not apply to it, and ``ray`` where Ray is not installed."""
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r} is not known; choose one of {', '.join(ENGINES)}")
    if engine == "local":
        for option, value in (("--address", address), ("--actor-cpus", actor_cpus), ("--ray-wait", ray_wait)):
            if value is not None:
                raise UsageError(f"{option} {value} is for a Ray cluster; add --engine ray, or drop {option}")
    if actor_cpus is not None and not (
        isinstance(actor_cpus, Integral) and not isinstance(actor_cpus, bool) and actor_cpus >= 1
    ):
        raise UsageError(f"--actor-cpus {actor_cpus} must be a whole number >= 1")
    if ray_wait is not None and not (isinstance(ray_wait, Real) and not isinstance(ray_wait, bool) and ray_wait > 0):
        raise UsageError(f"--ray-wait {ray_wait} must be a number of seconds above 0")
    if engine == "ray":
        if num_workers is not None:
            raise UsageError(
                "--workers sets the local engine's decode processes; drop it with --engine ray "
                "(each Ray actor decodes its own batches)"
            )
        from pixclust.embedding.engines.ray import require_ray

        require_ray()
