"""Settings tried as a hostile user would (issue #15, cases 11 and 12): every mistake is one line, nothing moves.

A run.json handed to ``--config`` and the options typed are checked once, by
``RunConfig``, for type and range, and an option the run would ignore is
refused; messages name a setting the way it was set (``--k`` on the command
line, ``"k"`` in the file, ``k=`` in Python). The command's own entry point runs
in this process on a few small digits with the ``pixels`` model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from command_line import assert_one_line_error
from command_line import pixclust as pixclust_cli
from conftest import tree_digest, write_digit_tree

import pixclust
from pixclust.errors import UsageError
from pixclust.runs.pipeline import RunConfig


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return write_digit_tree(tmp_path / "photos", per_class=3)


def write_config(path: Path, settings: dict) -> Path:
    path.write_text(json.dumps({"config": settings}))
    return path


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"move": "false"}, '"move": "false" in --config must be true or false'),
        ({"k": -3}, '"k": -3 in --config must be a whole number >= 2'),
        ({"seed": "abc"}, '"seed": "abc" in --config must be a whole number'),
        ({"out": None}, '"out": null in --config must be a path'),
        ({"batch_size": "x"}, '"batch_size": "x" in --config must be a whole number >= 1'),
        ({"source": 5}, '"source": 5 in --config must be a path'),
        ({"maps": "pca"}, '"maps": "pca" in --config must be a list of map names'),
    ],
)
def test_a_config_of_the_wrong_types_is_one_line_and_moves_nothing(
    tmp_path: Path,
    photos: Path,
    settings: dict,
    fragment: str,
) -> None:
    before = tree_digest(photos)
    config = write_config(
        tmp_path / "run.json", {"source": str(photos), "model": "pixels", "report": False, **settings}
    )
    assert_one_line_error(pixclust_cli("cluster", "--config", config, "--quiet", cwd=tmp_path), 2, fragment)
    assert tree_digest(photos) == before


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_bytes(b'{"config": {"source": "caf\xe9"}}')
    assert_one_line_error(pixclust_cli("cluster", "--config", config), 2, "not UTF-8 text")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--k", "0"], "--k '0' must be a whole number >= 2, or 'auto'"),
        (["--k", "\u00b2"], "--k '\u00b2' must be a whole number >= 2"),
        (["--seed", "-5"], "--seed -5 must be a whole number from 0"),
        (["--n-components", "5"], "--n-components 5 is not used"),
        (["--pipeline", "fixed", "--no-refine"], "--no-refine is not used"),
        (["--k", "3", "--k-max", "8"], "--k-max 8 is not used"),
        (["--pipeline", "auto", "--method", "gmm"], "--method 'gmm' belongs to the fixed pipeline"),
    ],
)
def test_bad_or_ignored_options_are_one_line(
    tmp_path: Path,
    photos: Path,
    options: list[str],
    fragment: str,
) -> None:
    args = ("cluster", photos, "--out", tmp_path / "run", "--model", "pixels", "--no-report", "--quiet", *options)
    assert_one_line_error(pixclust_cli(*args), 2, fragment)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"k": 0}, "k=0 must be a whole number >= 2"),
        ({"k": True}, "k=True must be a whole number"),
        ({"seed": -5}, "seed=-5 must be a whole number"),
        ({"move": "false"}, "move='false' must be True or False"),
        ({"workers": 1.5}, "workers=1.5 must be a whole number"),
        ({"out": ""}, "out='' must be a path"),
        ({"n_components": 5}, "n_components=5 is not used"),
        ({"pipeline": "fixed", "refine": False}, "refine=False is not used"),
        ({"report": False, "maps": ["pca"]}, "maps=['pca'] is not used"),
        ({"method": "hdbscan", "k": 4}, "k=4 cannot be used with hdbscan"),
    ],
)
def test_python_settings_are_checked_in_python_words(settings: dict, fragment: str) -> None:
    with pytest.raises(UsageError) as raised:
        RunConfig(**{"source": "photos", "out": "run", **settings})
    assert fragment in str(raised.value)


def test_k_above_the_image_count_is_refused_alike_by_both_pipelines() -> None:
    vectors = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    for pipeline in ("auto", "fixed"):
        with pytest.raises(UsageError, match=r"^k 7 is more than the 6 images; ask for at most 6 clusters"):
            pixclust.cluster(vectors, k=7, pipeline=pipeline)


@pytest.mark.slow
def test_settings_replayed_from_a_run_json_are_not_options_given(tmp_path: Path, photos: Path) -> None:
    fixed = pixclust_cli(
        "cluster",
        photos,
        "--out",
        tmp_path / "fixed",
        "--model",
        "pixels",
        "--method",
        "gmm",
        "--n-components",
        "5",
        "--k",
        "3",
        "--no-report",
        "--quiet",
    )
    assert fixed.returncode == 0, fixed.stderr
    replayed = tmp_path / "fixed" / "run.json"
    # The run.json's method and n-components would be ignored by the auto pipeline: replayed, they give way to it.
    again = pixclust_cli("cluster", "--config", replayed, "--out", tmp_path / "auto", "--pipeline", "auto", "--quiet")
    assert again.returncode == 0, again.stderr
    config = json.loads((tmp_path / "auto" / "run.json").read_text())["config"]
    assert (config["pipeline"], config["method"], config["k"]) == ("auto", None, 3)
    # Typed, the same setting is refused.
    typed = pixclust_cli(
        "cluster", "--config", replayed, "--out", tmp_path / "typed", "--pipeline", "auto", "--method", "gmm"
    )
    assert_one_line_error(typed, 2, "--method 'gmm' belongs to the fixed pipeline")
