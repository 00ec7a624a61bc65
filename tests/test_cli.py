"""The command as a user runs it: exit codes and output, in this process unless the process is the point."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from command_line import assert_one_line_error, pixclust, pixclust_process
from conftest import tree_digest


def test_help_answers_without_loading_the_heavy_stack() -> None:
    result = pixclust_process("--help")
    assert result.returncode == 0 and "cluster" in result.stdout and "models" in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, pixclust.cli; print('torch' in sys.modules, 'sklearn' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.split() == ["False", "False"]


def test_cluster_end_to_end_then_rerun_reuses_everything(tmp_path: Path, large_messy_tree) -> None:
    root, bad = large_messy_tree
    before = tree_digest(root)
    run_dir = tmp_path / "run"

    first = pixclust("cluster", str(root), "--out", str(run_dir), "--k", "3", "--truth", "folders")
    assert first.returncode == 0, first.stderr
    assert "cluster_00" in first.stdout and "duplication" in first.stdout
    assert "300 images used, 3 skipped (see errors.csv)" in first.stdout
    assert "ACC" in first.stdout and "NMI" in first.stdout and "ARI" in first.stdout
    with open(run_dir / "errors.csv", newline="") as stream:
        errors = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(stream)}
    assert errors == bad
    for name in ("clusters.csv", "run.json", "embeddings.parquet"):
        assert (run_dir / name).is_file()
    assert sum(1 for p in (run_dir / "clusters").rglob("*") if p.is_symlink()) == 300

    second = pixclust("cluster", str(root), "--out", str(run_dir), "--k", "3", "--quiet")
    assert second.returncode == 0, second.stderr
    record = json.loads((run_dir / "run.json").read_text())
    assert record["counts"]["extracted"] == 0 and record["counts"]["reused"] == 300
    assert "0 embedded, 300 reused" in second.stdout
    assert second.stderr == ""
    assert tree_digest(root) == before


def test_config_repeats_a_run(tmp_path: Path, messy_tree) -> None:
    root, _ = messy_tree
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    assert pixclust("cluster", str(root), "--out", str(first_dir), "--k", "2", "--seed", "3", "-q").returncode == 0
    repeat = pixclust("cluster", "--config", str(first_dir / "run.json"), "--out", str(second_dir), "-q")
    assert repeat.returncode == 0, repeat.stderr
    assert (first_dir / "clusters.csv").read_text() == (second_dir / "clusters.csv").read_text()
    assert json.loads((second_dir / "run.json").read_text())["config"]["seed"] == 3


def test_unavailable_weights_stop_with_exit_2_and_one_line(tmp_path: Path, messy_tree) -> None:
    root, _ = messy_tree
    # A process of its own: huggingface_hub reads HF_HUB_OFFLINE and HF_HOME when it is imported.
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    result = pixclust_process("cluster", str(root), "--out", str(tmp_path / "run"), "--model", "vgg16", env=offline)
    assert_one_line_error(result, 2, "vgg16", "--weights FILE")
    assert not (tmp_path / "run" / "embeddings.parquet").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "resnet5"], ["unknown model 'resnet5'", "Did you mean 'resnet50'"]),
        (["--k", "many"], ["--k 'many'"]),
        (["--method", "dbscan"], ["--method 'dbscan'", "kmeans"]),
        (["--weights", "/no/such/file.pth"], ["does not exist"]),
        (["--ink", "maybe"], ["--ink 'maybe'", "auto, on, off"]),
        (["--model", "hog", "--ink", "on"], ["--ink 'on' is not used", "not a network"]),
        (["--model", "efficientnet-lite0+ink", "--ink", "off"], ["turns ink on paper to grey", "drop one"]),
    ],
)
def test_user_mistakes_are_one_line_errors(tmp_path: Path, messy_tree, args: list[str], fragments: list[str]) -> None:
    root, _ = messy_tree
    result = pixclust("cluster", str(root), "--out", str(tmp_path / "run"), *args)
    assert_one_line_error(result, 2, *fragments)


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    assert_one_line_error(
        pixclust("cluster", str(tmp_path / "nope"), "--out", str(tmp_path / "r")), 2, "does not exist"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(pixclust("cluster", str(empty), "--out", str(tmp_path / "r2")), 2, "no usable images")


def test_models_lists_every_model_with_offline_status(tmp_path: Path) -> None:
    result = pixclust_process("models", env={"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 3}
    assert "efficientnet-lite0 (default)" in rows and "yes" in rows["efficientnet-lite0 (default)"]
    for name in (
        "efficientnet-lite1",
        "efficientnet-lite2",
        "vgg16",
        "inception_v3",
        "resnet50",
        "mobilenet_v2",
        "efficientnet_b0",
        "hog",
        "pixels",
    ):
        assert name in rows
    assert " no " in rows["vgg16"] and "4096" in rows["vgg16"]


@pytest.mark.slow
def test_demo_prints_clusters_and_scores(tmp_path: Path) -> None:
    # The first 150 digits: the whole 1,797 through the same default command are the quality guard's run.
    result = pixclust("demo", "--out", str(tmp_path / "demo"), "--limit", "150", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "150 images used, 0 skipped" in result.stdout
    assert "ACC" in result.stdout and "cluster_09" in result.stdout
    assert len(list((tmp_path / "demo" / "digits").rglob("*.png"))) == 150


def test_report_command_rebuilds_and_refuses_a_non_run(tmp_path: Path, messy_tree) -> None:
    root, _ = messy_tree
    run_dir = tmp_path / "run"
    assert pixclust("cluster", str(root), "--out", str(run_dir), "--k", "2", "--no-report", "-q").returncode == 0
    assert not (run_dir / "report.html").exists()
    rebuilt = pixclust("report", str(run_dir), "--map", "pca", "-q")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (run_dir / "report.html").is_file() and (run_dir / "plots" / "map_pca.png").is_file()
    assert_one_line_error(pixclust("report", str(tmp_path)), 2, "is not a pixclust run folder")
    assert_one_line_error(pixclust("report", str(run_dir), "--map", "mds"), 2, "--map 'mds'")


def test_unknown_option_is_a_usage_message_not_a_traceback() -> None:
    result = pixclust("cluster", "--bogus")
    assert result.returncode == 2 and "No such option: --bogus" in result.stderr
    assert "Traceback" not in result.stderr


def test_cluster_takes_every_run_setting_as_the_option_of_its_name() -> None:
    import inspect
    from dataclasses import fields

    from pixclust.cli.run_commands import cluster_command
    from pixclust.runs.pipeline import RunConfig

    options = set(inspect.signature(cluster_command).parameters)
    assert {spec.name for spec in fields(RunConfig)} <= options


def test_each_command_help_shows_the_library_defaults() -> None:
    import typer

    from pixclust.cli import app
    from pixclust.embedding.decode import DEFAULT_MAX_PIXELS
    from pixclust.embedding.embedder import MAX_DEFAULT_WORKERS

    group = typer.main.get_command(app)
    helps = {name: command.get_help(typer.Context(command, info_name=name)) for name, command in group.commands.items()}
    for command in group.commands.values():
        for param in command.params:
            assert "{" not in (getattr(param, "help", None) or ""), (command.name, param.name)
    cluster = " ".join(helps["cluster"].split())
    assert f"[default: one per core, at most {MAX_DEFAULT_WORKERS}]" in cluster
    assert f"[default: {DEFAULT_MAX_PIXELS:,}]" in cluster
