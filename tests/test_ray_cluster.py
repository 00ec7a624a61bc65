"""--engine ray on real two-node Ray clusters made with `ray start`, as docs/SCALE.md tells a user to make one.

Each cluster is a head node and a worker node on this machine, each with its
own home folder: the head makes the authentication token (Ray 2.60 turns token
authentication on once a token exists), and the token file is copied to the
worker's home and to the home of the pixclust that joins with --address, as a
user copies it between machines. The commands are docs/SCALE.md's, plus
--port, --temp-dir, a small object store and no dashboard to keep the test's
cluster small and apart from any other Ray on the machine; a test checks that
the documented commands are the ones run here. A lost node is every process of
the worker node killed with SIGKILL, as when a machine goes down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import write_digit_tree
from PIL import Image

import pixclust
from pixclust.embedding.runtimes import cache_dir
from pixclust.embedding.store import EmbeddingStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds a node's processes in /proc"),
]

RAY = str(Path(sys.executable).with_name("ray"))
DOCS = Path(__file__).resolve().parents[1] / "docs" / "SCALE.md"

# The commands of docs/SCALE.md, with HEAD_IP:PORT and CPU counts filled in by the test.
AUTH_MODE = "export RAY_AUTH_MODE=token"
GENERATE_TOKEN = "ray get-auth-token --generate"
START_HEAD = "ray start --head --port={port} --num-cpus={cpus}"
START_WORKER = "ray start --address={address} --num-cpus={cpus}"
CLUSTER = "pixclust cluster {source} --out {out} --engine ray --address {address}"
# What the test adds to those commands (see the module's docstring).
HEAD_EXTRAS = ["--include-dashboard=false", "--object-store-memory=100000000"]
WORKER_EXTRAS = ["--object-store-memory=100000000"]

# The real CLI, which SIGKILLs the worker node (NODE_SOCKET names its raylet) once the first shard is saved.
KILL_NODE_AFTER_FIRST_SHARD = r"""
import os, sys
sys.path.insert(0, os.environ["TESTS_DIR"])
from test_ray_cluster import kill_node
from pixclust.embedding import extraction, store
from pixclust.cli import main

extraction.FLUSH_EVERY = int(os.environ["FLUSH_EVERY"])
real_save = store.EmbeddingStore.save_partial
def save_partial(self, table):
    real_save(self, table)
    if not os.environ.get("NODE_KILLED"):
        os.environ["NODE_KILLED"] = "1"
        kill_node(os.environ["NODE_SOCKET"])
store.EmbeddingStore.save_partial = save_partial

sys.argv = ["pixclust", *sys.argv[1:]]
main()
"""


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((int(entry.name), parent, command))
    return found


def _processes_mentioning(text: str) -> dict[int, str]:
    """Every process whose command line contains ``text``, with that command line."""
    return {pid: command for pid, _, command in _processes() if text in command}


def kill_with_descendants(text: str) -> None:
    """SIGKILL every process whose command line contains ``text``, and everything they started.

    Ray renames its workers and agents (``ray::DashboardAgent``), so only the raylet and
    GCS name the cluster's folders; the rest are found as their children.
    """
    table = _processes()
    doomed = {pid for pid, _, command in table if text in command}
    while True:
        children = {pid for pid, parent, _ in table if parent in doomed} - doomed
        if not children:
            break
        doomed |= children
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_node(socket_path: str) -> None:
    """Every process of the node whose raylet listens on ``socket_path``, as when its machine goes down."""
    kill_with_descendants(f"--raylet_socket_name={socket_path}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalCluster:
    """A head node and a worker node started with `ray start` on this machine, each with its own home."""

    def __init__(self, head_cpus: int, worker_cpus: int) -> None:
        # Short: Ray's Unix sockets live under the temp dir, and their paths may not pass 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="pxr", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.homes = {name: self.root / name for name in ("head", "worker", "driver")}
        try:
            for home in self.homes.values():
                home.mkdir()
            self.ray("head", *GENERATE_TOKEN.split()[1:])
            self.ray("head", *START_HEAD.format(port=self.port, cpus=head_cpus).split()[1:], *HEAD_EXTRAS)
            for name in ("worker", "driver"):
                token = self.homes[name] / ".ray" / "auth_token"
                token.parent.mkdir()
                shutil.copyfile(self.homes["head"] / ".ray" / "auth_token", token)
            self.worker_socket = self.add_worker(worker_cpus)
        except BaseException:
            self.stop()
            raise

    def env(self, name: str) -> dict[str, str]:
        """The environment of a process on the machine ``name``: its own home, token authentication, no other Ray setting."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        return {
            **env,
            "HOME": str(self.homes[name]),
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
            # The exported network is shared with the rest of the suite instead of exported again per home.
            "PIXCLUST_CACHE": str(cache_dir()),
        }

    def ray(self, name: str, *args: str) -> str:
        command = [RAY, *args]
        if args[0] == "start":
            command.append(f"--temp-dir={self.root / 'ray'}")
        done = subprocess.run(command, env=self.env(name), capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def add_worker(self, cpus: int) -> str:
        """Start a worker node; the path of its raylet's socket, which every process of that node names."""
        raylets = f"--raylet_socket_name={self.root}"
        before = set(_processes_mentioning(raylets))
        self.ray("worker", *START_WORKER.format(address=self.address, cpus=cpus).split()[1:], *WORKER_EXTRAS)
        (command,) = [command for pid, command in _processes_mentioning(raylets).items() if pid not in before]
        self.wait_for_nodes()
        return re.search(r"--raylet_socket_name=(\S+)", command).group(1)

    def wait_for_nodes(self) -> None:
        """Until `ray status` (as the driver's machine runs it) shows the new node, so that a run sees it."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = subprocess.run(
                [RAY, "status", f"--address={self.address}"],
                env=self.env("driver"),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode == 0 and "Pending:" in done.stdout:
                active = done.stdout.split("Active:")[1].split("Pending:")[0]
                if active.count("node_") >= 2:
                    return
            time.sleep(1)
        raise AssertionError("the worker node did not join the head")

    def cluster(self, *args: str, driver: str | None = None, env: dict[str, str] | None = None, home: str = "driver"):
        """``pixclust cluster ... --engine ray --address`` as the driver's machine runs it (or ``driver`` code)."""
        command = [sys.executable, "-c", driver] if driver else [sys.executable, "-m", "pixclust"]
        return subprocess.run(
            [*command, "cluster", *args, "--engine", "ray", "--address", self.address, "--no-report", "--quiet"],
            env={**self.env(home), **(env or {})},
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )

    def stop(self) -> None:
        """Kill every process of this cluster (its GCS and raylets name its temp dir); any other Ray stays."""
        kill_with_descendants(str(self.root))
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def one_cpu_nodes() -> Iterator[LocalCluster]:
    """A head and a worker of one CPU each: the nodes on which an actor asking for 2 CPUs waited for ever."""
    cluster = LocalCluster(head_cpus=1, worker_cpus=1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_digit_tree(tmp_path_factory.mktemp("ray") / "photos", per_class=20)
    # A name that is not UTF-8 travels to the actors and back like any other.
    with Image.open(next(root.rglob("*.png"))) as digit, open(os.fsencode(root / "0") + b"/caf\xe9.png", "wb") as out:
        digit.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(out, format="PNG")
    return root


def test_the_documented_commands_are_the_ones_tested() -> None:
    scale = DOCS.read_text()
    for template in (AUTH_MODE, GENERATE_TOKEN, START_HEAD, START_WORKER, CLUSTER):
        documented = template.format(
            port=6379, cpus="2", address="HEAD_IP:6379", source="/shared/photos", out="runs/photos"
        )
        assert documented in scale, documented


def test_a_two_node_cluster_of_one_cpu_nodes_embeds_like_the_local_engine(
    one_cpu_nodes: LocalCluster, photos: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    done = one_cpu_nodes.cluster(str(photos), "--out", str(run_dir), "--k", "3")
    assert done.returncode == 0, done.stderr

    on_ray = EmbeddingStore(run_dir).load()
    local = pixclust.embed(photos, quiet=True)
    assert on_ray.paths == local.paths and len(local) == 61
    cosines = np.sum(on_ray.vectors * local.vectors, axis=1) / (
        np.linalg.norm(on_ray.vectors, axis=1) * np.linalg.norm(local.vectors, axis=1)
    )
    assert cosines.min() >= 0.999
    assert json.loads((run_dir / "run.json").read_text())["counts"]["extracted"] == 61


def test_actors_bigger_than_every_node_stop_the_run_with_one_line(
    one_cpu_nodes: LocalCluster, photos: Path, tmp_path: Path
) -> None:
    done = one_cpu_nodes.cluster(str(photos), "--out", str(tmp_path / "run"), "--model", "pixels", "--actor-cpus", "2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --actor-cpus 2: no node of the Ray cluster has 2 CPUs for an actor (2 nodes of 1 CPU); "
        "use --actor-cpus 1 or start larger nodes"
    )


def test_a_driver_without_the_token_is_told_to_copy_it(
    one_cpu_nodes: LocalCluster, photos: Path, tmp_path: Path
) -> None:
    # The worker's home holds the token; a home without one is a machine it was never copied to.
    tokenless = tmp_path / "home"
    tokenless.mkdir()
    one_cpu_nodes.homes["tokenless"] = tokenless
    done = one_cpu_nodes.cluster(str(photos), "--out", str(tmp_path / "run"), "--model", "pixels", home="tokenless")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: the Ray cluster at --address {one_cpu_nodes.address} refused this machine's token; copy the head "
        "node's ~/.ray/auth_token here (or set RAY_AUTH_TOKEN to its contents)"
    )
    assert "Traceback" not in done.stderr


def test_a_run_that_loses_its_last_node_stops_and_the_same_command_resumes(
    photos: Path, tmp_path: Path, one_cpu_nodes: LocalCluster
) -> None:
    # The head offers no CPU, as on clusters whose head only coordinates: the worker is the only node for actors.
    one_cpu_nodes.stop()
    cluster = LocalCluster(head_cpus=0, worker_cpus=1)
    try:
        run_dir = tmp_path / "run"
        args = [str(photos), "--out", str(run_dir), "--model", "pixels", "--k", "3", "--batch-size", "8"]
        env = {"FLUSH_EVERY": "16", "NODE_SOCKET": cluster.worker_socket, "TESTS_DIR": str(Path(__file__).parent)}
        stopped = cluster.cluster(*args, "--ray-wait", "5", driver=KILL_NODE_AFTER_FIRST_SHARD, env=env)
        assert stopped.returncode == 3, stopped.stderr
        last_line = stopped.stderr.strip().splitlines()[-1]
        assert re.fullmatch(
            r"error: the Ray cluster lost the nodes running pixclust's actors and had no room for one for 5 s "
            # Until Ray's health checks give up on it, the lost node is still listed, its CPU held by the dead actor.
            r"\(the cluster has (1 node of 0 CPUs|2 nodes: 1 of 0 CPUs, 1 of 1 CPU), 0 CPUs free\); "
            r"the vectors made so far are saved: "
            r"run the same command again once the cluster has nodes",
            last_line,
        ), last_line
        shards = sorted((run_dir / "embeddings.partial").glob("part-*.parquet"))
        saved = sum(pq.read_metadata(shard).num_rows for shard in shards)
        assert 16 <= saved < 61 and not (run_dir / "embeddings.parquet").exists()

        cluster.add_worker(1)
        resumed = cluster.cluster(*args)
        assert resumed.returncode == 0, resumed.stderr
        counts = json.loads((run_dir / "run.json").read_text())["counts"]
        assert counts["reused"] == saved and counts["extracted"] == 61 - saved
        np.testing.assert_allclose(
            EmbeddingStore(run_dir).load().vectors,
            pixclust.embed(photos, model="pixels", quiet=True).vectors,
            atol=1e-6,
        )
    finally:
        cluster.stop()
