"""`pixclust apply`: a person's corrections carried out on a run, checked first, kept through `cluster` and `add`."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from command_line import assert_one_line_error
from command_line import pixclust as pixclust_cli
from conftest import tree_digest, write_digit_tree

import pixclust
from pixclust.curation.corrections import Corrections, apply_edits, correct
from pixclust.curation.edits import run_identity
from pixclust.errors import RunFolderBusyError, UsageError
from pixclust.runs.add import add
from pixclust.runs.apply import apply
from pixclust.runs.pipeline import RunConfig, run


def rows_of(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "clusters.csv", newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def cluster_of(run_dir: Path) -> dict[str, str]:
    return {row["path"]: row["cluster"] for row in rows_of(run_dir)}


def members(run_dir: Path) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for path, cluster in cluster_of(run_dir).items():
        grouped.setdefault(cluster, []).append(path)
    return grouped


def digit_of(path: str) -> int:
    return int(Path(path).parts[-3])


def folder_state(run_dir: Path) -> dict[str, str]:
    """Every file's bytes (a link's target) in the run folder, by relative name; the lock file aside."""
    state = {}
    for path in sorted(run_dir.rglob("*")):
        name = str(path.relative_to(run_dir))
        if path.is_symlink():
            state[name] = "-> " + os.readlink(path)
        elif path.is_file() and path.name != ".pixclust-lock":
            state[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def report_data(run_dir: Path) -> dict:
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    start = page.index('id="report-data">') + len('id="report-data">')
    return json.loads(page[start : page.index("</script>", start)])


def write_edits(path: Path, edits: dict) -> Path:
    path.write_text(json.dumps({"version": 1, **edits}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source, run): 90 digits (0, 1, 6) clustered into 4 clusters, with a report."""
    base = tmp_path_factory.mktemp("apply")
    source = write_digit_tree(base / "images", per_class=30)
    run(RunConfig(source=str(source), out=str(base / "run"), k=4, maps=["pca"]), quiet=True)
    return source, base / "run"


@pytest.fixture
def run_copy(clustered: tuple[Path, Path], tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(clustered[1], target, symlinks=True)
    return target


def cluster_holding_most(run_dir: Path, digit: int) -> str:
    counts = Counter(cluster for path, cluster in cluster_of(run_dir).items() if digit_of(path) == digit)
    return counts.most_common(1)[0][0]


def sample_edits(run_dir: Path) -> tuple[dict, dict[str, str]]:
    """Edits that use every kind, and the images they name by role."""
    groups = members(run_dir)
    sixes = cluster_holding_most(run_dir, 6)
    others = sorted(name for name in groups if name != sixes)
    donor = groups[others[0]]
    apart = groups[sixes][:2]
    images = {
        "to_sixes": donor[0],
        "to_new": donor[1],
        "outlier": donor[2],
        "excluded": donor[3],
        "apart_a": apart[0],
        "apart_b": apart[1],
    }
    edits = {
        "rename": {sixes: "sixes ñ"},
        "merge": [[others[1], others[2]]],
        "move": [{"path": images["to_sixes"], "to": "sixes ñ"}, {"path": images["to_new"], "to": "mine"}],
        "outlier": [images["outlier"]],
        "exclude": [images["excluded"]],
        "pin": {"together": [], "apart": [[images["apart_a"], images["apart_b"]]]},
    }
    return edits, images | {"kept": others[1], "merged_away": others[2], "sixes": sixes}


def test_every_kind_of_edit_reaches_clusters_csv_the_folders_the_record_and_the_report(
    run_copy: Path, tmp_path: Path
) -> None:
    before = cluster_of(run_copy)
    edits, named = sample_edits(run_copy)
    identity = run_identity(json.loads((run_copy / "run.json").read_text())["run_id"], run_copy / "clusters.csv")
    edits_file = write_edits(tmp_path / "edits.json", {"run": identity, **edits})

    assert pixclust.apply is apply
    result = apply(run_copy, edits_file, quiet=True)

    after = cluster_of(run_copy)
    assert set(after) == set(before)
    assert after[named["to_sixes"]] == "sixes ñ" and after[named["to_new"]] == "mine"
    assert after[named["outlier"]] == "_outliers" and after[named["excluded"]] == "_excluded"
    assert after[named["apart_a"]] != after[named["apart_b"]]
    assert named["merged_away"] not in after.values() and named["sixes"] not in after.values()
    for path, cluster in before.items():
        if path not in named.values():
            expected = {named["sixes"]: "sixes ñ", named["merged_away"]: named["kept"]}.get(cluster, cluster)
            assert after[path] == expected, path
    ids = {row["cluster"]: int(row["cluster_id"]) for row in rows_of(run_copy)}
    assert sorted(ids[name] for name in ids if not name.startswith("_")) == list(range(len(ids) - 2))
    assert ids["_outliers"] == -2 and ids["_excluded"] == -3
    moved = {row["path"]: row for row in rows_of(run_copy)}
    assert moved[named["to_new"]]["distance"] == "" and moved[named["to_new"]]["silhouette"] == ""
    # Folders: one per cluster but _excluded, each holding links to exactly its images.
    folders = {
        entry.name: sorted(os.readlink(link) for link in entry.iterdir()) for entry in (run_copy / "clusters").iterdir()
    }
    expected = {}
    for path, cluster in after.items():
        if cluster != "_excluded":
            expected.setdefault(cluster, []).append(path)
    assert folders == {cluster: sorted(paths) for cluster, paths in expected.items()}
    assert result.images_moved == 5 and result.renamed == 1 and result.merged == 1
    record = json.loads((run_copy / "run.json").read_text())
    assert [entry["before"] for entry in record["edits"]] == [identity]
    assert record["edits"][0]["after"] == run_identity(record["run_id"], run_copy / "clusters.csv")
    page = report_data(run_copy)
    assert "sixes ñ" in [cluster["name"] for cluster in page["clusters"]] and page["run"] == record["edits"][0]["after"]

    state = folder_state(run_copy)
    again = apply(run_copy, edits_file, quiet=True)
    assert again.already_applied and folder_state(run_copy) == state


BAD_EDITS = {
    "an image the run does not hold": ({"outlier": ["/nowhere/else.png"]}, "does not hold"),
    "a path that climbs out of the source": ({"exclude": ["../../etc/passwd"]}, "does not hold"),
    "a cluster the run does not have": ({"merge": [["cluster_00", "cluster_77"]]}, "cluster_77"),
    "two clusters left with one name": ({"rename": {"cluster_00": "cluster_01"}}, "merge them instead"),
    "pixclust's own group as a name": ({"rename": {"cluster_00": "_excluded"}}, "cannot name a cluster"),
    "a name that is a path": ({"move": [{"path": "x", "to": "../up"}]}, "cannot name a cluster"),
    "names told apart only by case": ({"rename": {"cluster_00": "Fruit", "cluster_01": "fruit"}}, "only in case"),
    "a name a spreadsheet would run": ({"rename": {"cluster_00": "=HYPERLINK(1)"}}, "formula"),
    "a name with a broken escape": ({"rename": {"cluster_00": "bad\udcff"}}, "broken escape"),
    "a merge of one cluster": ({"merge": [["cluster_00"]]}, "two clusters or more"),
    "a move without a target": ({"move": [{"path": "x"}]}, '"move" entry'),
    "another run": ({"run": "0123456789ab@0000000000000000"}, "another run"),
}


@pytest.mark.parametrize("edits, message", BAD_EDITS.values(), ids=BAD_EDITS.keys())
def test_edits_that_do_not_fit_the_run_change_nothing(
    run_copy: Path, tmp_path: Path, edits: dict, message: str
) -> None:
    moves = [{"path": rows_of(run_copy)[0]["path"], "to": "cluster_01"}]
    edits_file = write_edits(tmp_path / "edits.json", {"move": moves, **edits})
    state = folder_state(run_copy)
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        apply(run_copy, edits_file, quiet=True)
    assert folder_state(run_copy) == state


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe not text", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"version": 2}', "version 2"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_a_file_that_is_not_an_edits_file_is_one_line(
    run_copy: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "edits.json").write_bytes(content)
    with pytest.raises(UsageError, match=message):
        apply(run_copy, tmp_path / "edits.json", quiet=True)


def test_an_apply_cut_short_is_finished_by_running_it_again(
    run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pixclust.runs.apply as applying

    record = json.loads((run_copy / "run.json").read_text())
    identity = run_identity(record["run_id"], run_copy / "clusters.csv")
    edits_file = write_edits(tmp_path / "edits.json", {"run": identity, "rename": {"cluster_00": "first"}})
    written = applying.write_text_atomic

    def killed_at_clusters_csv(path: Path, text: str) -> None:
        if path.name == "clusters.csv":
            raise KeyboardInterrupt
        written(path, text)

    monkeypatch.setattr(applying, "write_text_atomic", killed_at_clusters_csv)
    with pytest.raises(KeyboardInterrupt):
        apply(run_copy, edits_file, quiet=True)
    monkeypatch.setattr(applying, "write_text_atomic", written)
    assert "first" not in cluster_of(run_copy).values()

    def killed_at_report(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(applying, "build_report", killed_at_report)
    with pytest.raises(KeyboardInterrupt):
        apply(run_copy, edits_file, quiet=True)
    monkeypatch.undo()
    assert "first" in cluster_of(run_copy).values()
    assert "first" not in [cluster["name"] for cluster in report_data(run_copy)["clusters"]]

    assert apply(run_copy, edits_file, quiet=True).already_applied
    assert "first" in [cluster["name"] for cluster in report_data(run_copy)["clusters"]]
    assert len(json.loads((run_copy / "run.json").read_text())["edits"]) == 1


def test_an_empty_edits_file_changes_nothing(run_copy: Path, tmp_path: Path) -> None:
    state = folder_state(run_copy)
    result = apply(run_copy, write_edits(tmp_path / "edits.json", {}), quiet=True)
    assert result.images_moved == 0 and not result.already_applied
    assert folder_state(run_copy) == state


def test_edits_made_on_an_earlier_state_of_the_run_are_refused(run_copy: Path, tmp_path: Path) -> None:
    record = json.loads((run_copy / "run.json").read_text())
    identity = run_identity(record["run_id"], run_copy / "clusters.csv")
    first = write_edits(tmp_path / "first.json", {"run": identity, "rename": {"cluster_00": "first"}})
    second = write_edits(tmp_path / "second.json", {"run": identity, "rename": {"cluster_01": "second"}})
    apply(run_copy, first, report=False, quiet=True)
    with pytest.raises(UsageError, match="earlier state of this run"):
        apply(run_copy, second, report=False, quiet=True)
    assert "second" not in cluster_of(run_copy).values()


def test_paths_relative_to_the_image_folder_name_its_images(
    run_copy: Path, clustered: tuple[Path, Path], tmp_path: Path
) -> None:
    source = clustered[0]
    image = rows_of(run_copy)[5]["path"]
    relative = os.path.relpath(image, source)
    apply(run_copy, write_edits(tmp_path / "edits.json", {"outlier": [relative]}), report=False, quiet=True)
    assert cluster_of(run_copy)[image] == "_outliers"


def test_clustering_again_keeps_renames_marks_pins_and_made_clusters(
    run_copy: Path, clustered: tuple[Path, Path], tmp_path: Path
) -> None:
    source = clustered[0]
    edits, named = sample_edits(run_copy)
    together = [named["to_sixes"], members(run_copy)[named["kept"]][0]]
    edits["pin"]["together"] = [together]
    apply(run_copy, write_edits(tmp_path / "edits.json", edits), report=False, quiet=True)
    run_id = json.loads((run_copy / "run.json").read_text())["run_id"]

    # Another seed numbers the clusters differently; the corrections hold by image, not by number.
    run(RunConfig(source=str(source), out=str(run_copy), k=4, seed=5, maps=["pca"]), quiet=True)

    after = cluster_of(run_copy)
    sixes = [path for path, cluster in after.items() if cluster == "sixes ñ"]
    assert Counter(digit_of(path) for path in sixes).most_common(1)[0][0] == 6
    assert after[named["outlier"]] == "_outliers" and after[named["excluded"]] == "_excluded"
    assert after[named["to_new"]] == "mine"
    assert after[named["apart_a"]] != after[named["apart_b"]]
    assert after[together[0]] == after[together[1]]
    assert not (run_copy / "clusters" / "_excluded").exists()
    record = json.loads((run_copy / "run.json").read_text())
    assert record["run_id"] == run_id and len(record["edits"]) == 1


def test_added_images_join_the_corrected_clusters(run_copy: Path, tmp_path: Path) -> None:
    edits, named = sample_edits(run_copy)
    apply(run_copy, write_edits(tmp_path / "edits.json", edits), report=False, quiet=True)
    more = write_digit_tree(tmp_path / "more", per_class=36)
    result = add(run_copy, [more], report=False, quiet=True)
    assert len(result.paths) == 18
    sixes = [cluster for path, cluster in zip(result.paths, result.clusters, strict=True) if digit_of(path) == 6]
    assert Counter(sixes).most_common(1)[0][0] == "sixes ñ"
    after = cluster_of(run_copy)
    assert after[named["excluded"]] == "_excluded" and after[named["to_new"]] == "mine"
    assert named["merged_away"] not in set(result.clusters)


def test_the_images_of_a_move_run_move_to_their_corrected_folders_and_restore_puts_them_back(tmp_path: Path) -> None:
    from pixclust.curation.move import restore_moves

    source = write_digit_tree(tmp_path / "images", per_class=8)
    original = tree_digest(source)
    run_dir = tmp_path / "run"
    run(RunConfig(source=str(source), out=str(run_dir), k=2, move=True, report=False), quiet=True)
    groups = members(run_dir)
    moved, excluded = groups["cluster_01"][:2]
    edits = {"rename": {"cluster_00": "first"}, "move": [{"path": moved, "to": "first"}], "exclude": [excluded]}

    apply(run_dir, write_edits(tmp_path / "edits.json", edits), quiet=True)

    after = members(run_dir)
    for cluster in ("first", "cluster_01"):
        folder = run_dir / "clusters" / cluster
        files = sorted(entry.name for entry in folder.iterdir())
        assert all((folder / name).is_file() and not (folder / name).is_symlink() for name in files)
        assert files == sorted(Path(path).name for path in after[cluster])
    assert Path(excluded).is_file() and not (run_dir / "clusters" / "_excluded").exists()
    assert not Path(moved).exists() and (run_dir / "clusters" / "first" / Path(moved).name).is_file()

    restore_moves(run_dir)
    assert tree_digest(source) == original

    # Moved in again by clustering again: the corrections hold, and the excluded image stays at its source.
    run(RunConfig(source=str(source), out=str(run_dir), k=2, move=True, report=False), quiet=True)
    assert Path(excluded).is_file() and not Path(moved).exists()
    assert cluster_of(run_dir)[excluded] == "_excluded" and cluster_of(run_dir)[moved] == "first"
    restore_moves(run_dir)
    assert tree_digest(source) == original


def test_a_move_run_whose_journal_is_gone_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    source = write_digit_tree(tmp_path / "images", per_class=6)
    run_dir = tmp_path / "run"
    run(RunConfig(source=str(source), out=str(run_dir), k=2, move=True, report=False), quiet=True)
    (run_dir / "moves.jsonl").unlink()
    state = folder_state(run_dir)
    edits_file = write_edits(tmp_path / "edits.json", {"rename": {"cluster_00": "first"}})
    with pytest.raises(UsageError, match="journal that is gone"):
        apply(run_dir, edits_file, quiet=True)
    assert folder_state(run_dir) == state


def test_a_copy_run_gets_copies_in_its_corrected_folders(tmp_path: Path) -> None:
    source = write_digit_tree(tmp_path / "images", per_class=8)
    run_dir = tmp_path / "run"
    run(RunConfig(source=str(source), out=str(run_dir), k=2, copy=True, report=False), quiet=True)
    moved = members(run_dir)["cluster_01"][0]
    apply(run_dir, write_edits(tmp_path / "edits.json", {"move": [{"path": moved, "to": "mine"}]}), quiet=True)
    copy = run_dir / "clusters" / "mine" / Path(moved).name
    assert copy.is_file() and not copy.is_symlink() and copy.read_bytes() == Path(moved).read_bytes()
    assert not (run_dir / "clusters" / "cluster_01" / Path(moved).name).exists()
    assert Path(moved).is_file()


def test_a_second_writer_waits_its_turn(run_copy: Path, tmp_path: Path) -> None:
    from pixclust.runs.folder import LOCK_FILE
    from pixclust.runs.lock import hold_lock

    edits_file = write_edits(tmp_path / "edits.json", {"rename": {"cluster_00": "a"}})
    held = hold_lock(run_copy / LOCK_FILE)
    try:
        with pytest.raises(RunFolderBusyError):
            apply(run_copy, edits_file, quiet=True)
    finally:
        os.close(held)
    assert "a" not in cluster_of(run_copy).values()


def test_the_command_applies_and_a_mistake_is_one_line(run_copy: Path, tmp_path: Path) -> None:
    good = write_edits(tmp_path / "good.json", {"rename": {"cluster_00": "first"}})
    done = pixclust_cli("apply", run_copy, good, "--no-report")
    assert done.returncode == 0, done.stderr
    assert "1 clusters renamed" in done.stdout and "first" in done.stdout
    bad = write_edits(tmp_path / "bad.json", {"outlier": ["/no/such.png"]})
    failed = pixclust_cli("apply", run_copy, bad)
    assert_one_line_error(failed, 2, "does not hold")


def test_a_name_follows_most_of_its_images_when_clusters_are_renumbered() -> None:
    paths = [f"/p/{index}.png" for index in range(12)]
    # The person named the first six "cats"; the new clustering splits them 5 / 1 and numbers clusters anew.
    corrections = Corrections(names={"cats": paths[:6]}, exclude=[paths[11]], apart=[[paths[0], paths[1]]])
    clusters = ["c1"] * 5 + ["c0"] * 7
    vectors = np.eye(12)[:, :4] + np.array([[1.0, 0, 0, 0]] * 5 + [[0, 1.0, 0, 0]] * 7)
    corrected = correct(paths, clusters, np.zeros(12), corrections, vectors=vectors)
    assert corrected[2:5] == ["cats"] * 3 and corrected[5] == "c0"
    assert corrected[11] == "_excluded"
    assert corrected[0] != corrected[1]


def test_damaged_kept_corrections_stop_clustering_again_before_any_embedding(
    run_copy: Path, clustered: tuple[Path, Path], tmp_path: Path
) -> None:
    from PIL import Image

    # The run's images and one it has never embedded, as its source.
    source = tmp_path / "images"
    shutil.copytree(clustered[0], source)
    Image.radial_gradient("L").convert("RGB").save(source / "new.png")
    record = json.loads((run_copy / "run.json").read_text())
    record["config"]["source"] = str(source)
    (run_copy / "run.json").write_text(json.dumps(record))
    (run_copy / "corrections.json").write_text('{"version": 1, "names": 5}')
    state = folder_state(run_copy)
    with pytest.raises(UsageError, match=r"corrections\.json is damaged"):
        run(RunConfig(source=str(source), out=str(run_copy), k=4), quiet=True)
    assert folder_state(run_copy) == state


def test_corrections_applied_one_after_another_are_kept_as_the_last_left_them() -> None:
    from pixclust.curation.edits import parse_edits

    paths = [f"/p/{index}.png" for index in range(12)]
    clusters = ["a"] * 6 + ["b"] * 6
    distances = np.arange(12, dtype=float)

    def applied(clusters: list[str], edits: dict) -> tuple[list[str], Corrections]:
        after, _, corrections = apply_edits(paths, clusters, distances, parse_edits({"version": 1, **edits}))
        return after, corrections

    first, kept = applied(clusters, {"rename": {"a": "fruit"}, "move": [{"path": paths[6], "to": "mine"}]})
    second, later = applied(first, {"rename": {"fruit": "apples", "mine": "ours"}})
    third, last = applied(second, {"move": [{"path": paths[7], "to": "ours"}]})
    kept = kept.followed_by(later).followed_by(last)
    assert set(kept.names) == {"apples"} and set(kept.made) == {"ours"}
    # A new clustering that knows nothing of them, numbered the other way round.
    again = correct(paths, ["x"] * 6 + ["y"] * 6, distances, kept)
    assert third == ["apples"] * 6 + ["ours"] * 2 + ["b"] * 4
    assert again == ["apples"] * 6 + ["ours"] * 2 + ["y"] * 4
