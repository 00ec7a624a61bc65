"""--engine ray: a real local Ray instance (2 CPUs) embeds like the local engine, and a killed run resumes.

How the actor pool is sized and the settings checked are tested here without Ray;
tests/test_ray_cluster.py runs real two-node clusters made with `ray start`.

The Ray instance is started once in this process; the killed run is a
separate driver process (the real CLI) that joins it with --address, as a
user's second terminal would join a cluster, and is killed with SIGKILL
right after its second shard is saved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import pixclust
from pixclust.embedding.engines.ray import ActorPlan, RayEmbedder, RaySettings, describe_nodes, plan_actors
from pixclust.embedding.extractor import load_extractor
from pixclust.embedding.store import EmbeddingStore
from pixclust.embeddings import arrow_schema
from pixclust.errors import ModelUnavailableError, UsageError
from pixclust.runs.pipeline import RunConfig

BATCH = 8
FLUSH_EVERY = 16

# The real CLI, with shards every FLUSH_EVERY vectors and a SIGKILL to itself once KILL_AFTER_SHARDS are on disk.
DRIVER = r"""
import os, signal, sys
from pixclust.embedding import extraction, store
from pixclust.cli import main

extraction.FLUSH_EVERY = int(os.environ["FLUSH_EVERY"])
real_save = store.EmbeddingStore.save_partial
saved = []
def save_partial(self, table):
    real_save(self, table)
    saved.append(table.num_rows)
    if len(saved) == int(os.environ["KILL_AFTER_SHARDS"]):
        os.kill(os.getpid(), signal.SIGKILL)
store.EmbeddingStore.save_partial = save_partial

sys.argv = ["pixclust", *sys.argv[1:]]
main()
"""


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_ray_engine_gives_the_local_engines_embeddings_and_clusters(
    ray_instance: Any, digit_tree: Path, tmp_path: Path
) -> None:
    local = pixclust.embed(digit_tree, quiet=True)
    on_ray = pixclust.embed(digit_tree, out=tmp_path / "run", engine="ray", quiet=True)

    assert on_ray.paths == local.paths
    assert on_ray.n_extracted == len(local) == 180 and on_ray.n_reused == 0
    assert cosines(on_ray.vectors, local.vectors).min() >= 0.999
    np.testing.assert_array_equal(on_ray.image_sizes, local.image_sizes)
    np.testing.assert_array_equal(on_ray.image_stats, local.image_stats)
    assert pq.read_schema(tmp_path / "run" / "embeddings.parquet") == arrow_schema(local.dim)
    assert not (tmp_path / "run" / "embeddings.partial").exists()
    np.testing.assert_array_equal(pixclust.cluster(on_ray, k=3).labels, pixclust.cluster(local, k=3).labels)
    # The store does not care which engine filled it.
    again = pixclust.embed(digit_tree, out=tmp_path / "run", quiet=True)
    assert (again.n_extracted, again.n_reused) == (0, 180)


@pytest.mark.slow
def test_ray_engine_skips_bad_files_with_the_local_engines_reasons(
    ray_instance: Any, messy_tree: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, expected = messy_tree
    local = pixclust.embed(root, model="pixels", quiet=True)
    on_ray = pixclust.embed(root, model="pixels", out=tmp_path / "run", engine="ray", batch_size=BATCH, quiet=True)
    assert {Path(s.path).name: s.reason for s in on_ray.skipped} == expected
    assert on_ray.skipped == local.skipped
    np.testing.assert_array_equal(on_ray.vectors, local.vectors)


@pytest.mark.slow
def test_killed_ray_run_resumes_embedding_only_the_missing_images(
    ray_instance: Any, digit_tree: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    args = [
        "cluster",
        str(digit_tree),
        "--out",
        str(run_dir),
        "--model",
        "pixels",
        "--k",
        "3",
        "--batch-size",
        str(BATCH),
        "--no-report",
        "--quiet",
        "--engine",
        "ray",
        "--address",
        ray_instance.get_runtime_context().gcs_address,
    ]
    env = {**os.environ, "FLUSH_EVERY": str(FLUSH_EVERY), "KILL_AFTER_SHARDS": "2"}
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=240)
    finally:
        # Whatever the driver left in its session goes with it; the cluster itself lives in this process.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert process.returncode == -signal.SIGKILL, stderr

    shards = sorted((run_dir / "embeddings.partial").glob("part-*.parquet"))
    assert len(shards) == 2
    saved = len(EmbeddingStore(run_dir).known(load_extractor("pixels").model_id).row_of_hash)
    assert saved == sum(pq.read_metadata(shard).num_rows for shard in shards) >= 2 * FLUSH_EVERY
    assert saved < 180 and not (run_dir / "embeddings.parquet").exists()

    pixclust.run(
        RunConfig(str(digit_tree), str(run_dir), model="pixels", k=3, batch_size=BATCH, report=False, engine="ray"),
        quiet=True,
    )
    counts = json.loads((run_dir / "run.json").read_text())["counts"]
    assert counts == {"images_used": 180, "files_skipped": 0, "extracted": 180 - saved, "reused": saved}
    resumed = EmbeddingStore(run_dir).load()
    never_killed = pixclust.embed(digit_tree, model="pixels", quiet=True)
    assert resumed.paths == never_killed.paths
    np.testing.assert_allclose(resumed.vectors, never_killed.vectors, rtol=1e-6, atol=1e-6)
    assert not (run_dir / "embeddings.partial").exists()


@pytest.mark.slow
def test_ray_tasks_examine_the_files_discovery_found_as_this_process_does(
    ray_instance: Any, messy_tree: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixclust.embedding import extraction
    from pixclust.embedding.engines import ray as ray_engine

    root, _ = messy_tree
    os.mkfifo(root / "pipe.png")
    here = extraction.discover_sources(root, include_hidden=False)
    monkeypatch.setattr(ray_engine, "EXAMINE_BATCH", 4)
    on_ray = extraction.discover_sources(root, include_hidden=False, ray_wait=30)
    assert on_ray == here
    assert len(here.files) > 4 and {Path(skipped.path).name for skipped in here.skipped} >= {"pipe.png"}


@pytest.mark.slow
def test_files_are_hashed_by_ray_tasks_as_by_this_process(
    ray_instance: Any, messy_tree: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixclust.embedding import extraction
    from pixclust.embedding.engines import ray as ray_engine
    from pixclust.embedding.store import KnownEmbeddings

    root, _ = messy_tree
    # Files that cannot be hashed: a FIFO (reading it would block) and a link to nothing.
    os.mkfifo(root / "pipe.png")
    (root / "dangling.png").symlink_to(root / "nowhere.png")
    paths = sorted(str(path) for path in root.rglob("*") if not path.is_dir())
    # A stored hash for one file whose path, size and mtime are unchanged is used without reading the file.
    status = os.stat(paths[0])
    known = KnownEmbeddings(hash_by_stat={(paths[0], status.st_size, status.st_mtime_ns): "stored"})
    here = extraction.hash_files(paths, known)
    monkeypatch.setattr(ray_engine, "HASH_BATCH", 3)
    on_ray = extraction.hash_files(paths, known, ray_wait=30)
    assert here[1][0] == "stored" and here[3]
    # Batches of 3 come back as they finish; the answers are the same, in the same order.
    assert on_ray == here


@pytest.mark.slow
def test_a_node_whose_model_differs_stops_the_run_with_one_line(ray_instance: Any, digit_tree: Path) -> None:
    """An actor that cannot load the driver's model hands back its error; the driver raises it, not Ray's traceback."""
    extractor = load_extractor("pixels")
    # As if the driver had other weights than the nodes: the actors' model id no longer matches.
    extractor.record = replace(extractor.record, weights_sha256="0" * 64)
    embedder = RayEmbedder(
        extractor,
        model="pixels",
        weights=None,
        runtime="auto",
        precision="auto",
        batch_size=BATCH,
        max_pixels=10**8,
        settings=RaySettings(),
    )
    paths = sorted(str(p) for p in digit_tree.rglob("*.png"))[:20]
    with pytest.raises(
        ModelUnavailableError, match=r"^Ray node .*model 'pixels' is pixels:\w+ there, not .* as on the driver"
    ):
        list(embedder.iter_batches(paths))


def test_engine_options_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="engine='spark' is not known"):
        RunConfig("photos", str(tmp_path), engine="spark")
    with pytest.raises(UsageError, match="add engine='ray'"):
        RunConfig("photos", str(tmp_path), address="head:6379")
    with pytest.raises(UsageError, match="drop it with engine='ray'"):
        RunConfig("photos", str(tmp_path), engine="ray", workers=2)
    # As if Ray were not installed: a None entry makes `import ray` fail.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"run: pip install 'pixclust\[ray\]'$"):
        RunConfig("photos", str(tmp_path), engine="ray")
    monkeypatch.delitem(sys.modules, "ray")
    with pytest.raises(UsageError, match=r"^actor_cpus=2 is not used: only the ray engine starts actors; drop it$"):
        RunConfig("photos", str(tmp_path), actor_cpus=2)
    with pytest.raises(
        UsageError, match=r"^ray_wait=30 is not used: only the ray engine waits for a cluster; drop it$"
    ):
        RunConfig("photos", str(tmp_path), ray_wait=30)
    with pytest.raises(UsageError, match=r"^actor_cpus=0 must be a whole number >= 1$"):
        RunConfig("photos", str(tmp_path), engine="ray", actor_cpus=0)
    with pytest.raises(UsageError, match=r"^--actor-cpus 0.5 must be a whole number >= 1$"):
        pixclust.embed(tmp_path, engine="ray", actor_cpus=0.5)
    with pytest.raises(UsageError, match=r"^--ray-wait 30 is for a Ray cluster; add --engine ray, or drop --ray-wait$"):
        pixclust.embed(tmp_path, ray_wait=30)


def node(cpus: float, gpus: float = 0) -> dict[str, float]:
    return {"CPU": cpus, "memory": 2**33, **({"GPU": gpus} if gpus else {})}


def test_actors_fit_the_smallest_node_that_can_host_one() -> None:
    # The nodes on which 2-CPU actors waited for ever: now one 1-CPU actor on each.
    assert plan_actors([node(1), node(1)]) == ActorPlan(actors=2, cpus=1, gpus=0)
    assert plan_actors([node(16), node(16)]) == ActorPlan(actors=16, cpus=2, gpus=0)
    # A head that schedules nothing hosts no actor and does not shrink the others.
    assert plan_actors([node(0), node(4), node(3)]) == ActorPlan(actors=3, cpus=2, gpus=0)
    assert plan_actors([node(1), node(8)]) == ActorPlan(actors=9, cpus=1, gpus=0)
    assert plan_actors([node(8), node(8)], actor_cpus=3) == ActorPlan(actors=4, cpus=3, gpus=0)
    # With GPUs: one actor per GPU, with its share of the node's CPUs; CPU-only nodes wait.
    assert plan_actors([node(8, gpus=4), node(2, gpus=1), node(32)]) == ActorPlan(actors=5, cpus=2, gpus=1)
    assert plan_actors([node(4, gpus=4)]).threads == 1


def test_no_node_for_an_actor_is_one_line_at_once() -> None:
    with pytest.raises(
        UsageError,
        match=r"^--actor-cpus 4: no node of the Ray cluster has 4 CPUs for an actor "
        r"\(3 nodes: 1 of 0 CPUs, 2 of 2 CPUs\); use --actor-cpus 2 or start larger nodes$",
    ):
        plan_actors([node(0), node(2), node(2)], actor_cpus=4)
    with pytest.raises(
        UsageError, match=r"^no node of the Ray cluster has a CPU or a GPU for an actor \(1 node of 0 CPUs\)"
    ):
        plan_actors([node(0)])
    assert describe_nodes([]) == "no live node"
    assert describe_nodes([node(4, gpus=1)] * 2) == "2 nodes of 4 CPUs and 1 GPU"


def test_cli_names_an_unusable_ray_address(digit_tree: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixclust",
            "cluster",
            str(digit_tree),
            "--out",
            str(tmp_path / "run"),
            "--model",
            "pixels",
            "--engine",
            "ray",
            "--address",
            "no-port-here",
            "--quiet",
            "--no-report",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 2
    assert "error: cannot use the Ray cluster at --address no-port-here" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_says_how_to_install_ray_when_it_is_missing(digit_tree: Path, tmp_path: Path) -> None:
    without_ray = "import sys; sys.modules['ray'] = None; from pixclust.cli import main; main()"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            without_ray,
            "cluster",
            str(digit_tree),
            "--out",
            str(tmp_path / "run"),
            "--engine",
            "ray",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --engine ray needs Ray, which is not installed; run: pip install 'pixclust[ray]'"
    )
