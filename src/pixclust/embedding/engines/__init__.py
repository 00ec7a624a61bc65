"""Where images are embedded: in this process (``local``, ``embedder.Embedder``) or by Ray actors (``ray``).

Both engines yield the same :class:`pixclust.embedding.embedder.ExtractedBatch` objects,
so ``extraction.embed`` hashes, reuses stored vectors, writes shards to
``embeddings.partial/`` and assembles the result the same way whichever ran.
"""

from __future__ import annotations

from pixclust.errors import UsageError

ENGINES = ("local", "ray")


def check_engine(engine: str, address: str | None, num_workers: int | None = None) -> None:
    """Refuse an unknown engine, options that do not apply to it, and ``ray`` where Ray is not installed."""
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r} is not known; choose one of {', '.join(ENGINES)}")
    if engine == "local" and address is not None:
        raise UsageError(f"--address {address} names a Ray cluster; add --engine ray, or drop --address")
    if engine == "ray":
        if num_workers is not None:
            raise UsageError(
                "--workers sets the local engine's decode processes; drop it with --engine ray "
                "(each Ray actor decodes its own batches)"
            )
        from pixclust.embedding.engines.ray import require_ray

        require_ray()
