"""Hostile file and folder names (issue #15, cases 6, 7, 9, 10): every name survives every file pixclust writes and reads back.

Names that are not UTF-8, that hold Rich markup or terminal escape codes, that
look like spreadsheet formulas, or that look like the report template's
placeholders, all in real folders and real runs.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from command_line import pixclust_process
from conftest import write_digit_tree

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def pixclust(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # A process of its own: its subject is what a terminal would be sent, byte for byte, whatever pixclust prints.
    return pixclust_process(*args, cwd=cwd, encoding="utf-8", errors="surrogateescape")


def named(folder: Path, raw_name: bytes) -> Path:
    """``folder/raw_name`` as Python carries it (os.listdir's surrogateescape str)."""
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), raw_name)))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_every_name_reads_back_from_its_cell_and_no_cell_is_a_formula() -> None:
    from pixclust.names import escape_name, from_cell, to_cell, unescape_name

    names = [
        os.fsdecode(b"bad\xff.png"),
        os.fsdecode(b"\\\xfe\\x41\\\\.png"),
        "C:\\Users\\me\\photo.png",
        "a\\xff literally.png",
        '=HYPERLINK("http://evil.example","x")',
        "-x.png",
        "+1",
        "@SUM(1+1)",
        "\tTab.png",
        "\rCR.png",
        "'=quoted.png",
        "''-twice.png",
        "'plain quote.png",
        "",
    ]
    for name in names:
        cell = to_cell(name)
        cell.encode("utf-8")
        assert not cell.startswith(FORMULA_START), cell
        assert from_cell(cell) == name
        assert unescape_name(escape_name(name)) == name
    assert escape_name(os.fsdecode(b"bad\xff.png")) == "bad\\xff.png"
    assert to_cell("plain/photo.png") == "plain/photo.png" and to_cell("C:\\Users\\a.png") == "C:\\Users\\a.png"
    assert to_cell("-x.png") == "'-x.png"


@pytest.mark.slow
def test_a_name_that_is_not_utf8_is_clustered_linked_and_read_back(tmp_path: Path, messy_tree) -> None:
    root, _ = messy_tree
    image = named(root, b"bad\xff.png")
    os.rename(next((root / "0").rglob("*.png")), image)
    not_image = named(root / "bad", b"notes\xfe.png")
    not_image.write_text("not a picture\n")
    # Markup and an escape code in the run folder's name, printed twice at the end of the run.
    run_dir = tmp_path / "R[/b]\x1b[2J"

    result = pixclust("cluster", root, "--out", run_dir, "--k", "3", "--map", "pca", "-q")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "\x1b" not in result.stdout
    assert f"run folder: {tmp_path}/R[/b]\\x1b[2J" in result.stdout

    from pixclust.names import from_cell
    from pixclust.report.run_view import load_run

    rows = {from_cell(row["path"]): row for row in read_csv(run_dir / "clusters.csv")}
    assert str(image) in rows
    folder = run_dir / "clusters" / rows[str(image)]["cluster"]
    links = [entry for entry in folder.iterdir() if os.readlink(entry) == str(image)]
    assert len(links) == 1 and links[0].read_bytes() == image.read_bytes()
    errors = {from_cell(row["path"]): row["reason"] for row in read_csv(run_dir / "errors.csv")}
    assert errors[str(not_image)] == "not an image"
    view = load_run(run_dir)
    assert str(image) in view.paths and str(not_image) in [item.path for item in view.errors]
    assert (run_dir / "report.html").is_file()


@pytest.mark.slow
def test_report_keeps_names_that_look_like_html_or_placeholders_as_data(tmp_path: Path) -> None:
    import pixclust
    from pixclust.report.run_view import load_run
    from pixclust.runs.pipeline import RunConfig

    root = write_digit_tree(tmp_path / "{{DATA}}", per_class=6)
    digits = sorted(root.rglob("*.png"))
    hostile = ["<!--<script>.png", "{{APP}}.png", "a&amp;<b>.png", "{{TITLE}}.png"]
    for digit, name in zip(digits, hostile, strict=False):
        os.rename(digit, root / name)
    run_dir = tmp_path / "run"
    pixclust.run(
        RunConfig(source=str(root), out=str(run_dir), model="hog", k=3, pipeline="fixed", maps=["pca"]), quiet=True
    )

    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert re.search(r"<title>(.*?)</title>", html).group(1) == "pixclust: {{DATA}}"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert [attributes for attributes, _ in scripts] == ["", ' type="application/json" id="report-data"', ""]
    embedded = scripts[1][1]
    # In a script element "<!--" or "<script" would change where the browser ends it.
    assert "<" not in embedded
    data = json.loads(embedded)
    from pixclust.names import unescape_name

    assert set(hostile) <= set(data["points"]["name"])
    assert [unescape_name(path) for path in data["points"]["path"]] == load_run(run_dir).paths
    assert data["title"] == "pixclust: {{DATA}}"
    assets = Path(pixclust.__file__).parent / "report" / "assets"
    assert scripts[2][1] == (assets / "report.js").read_text(encoding="utf-8")


def precomputed(folder: Path, ids: list[str], dim: int = 8) -> tuple[Path, Path]:
    """An embeddings.npy of three tight groups of rows and its id list, as another tool would leave them."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, dim))
    vectors = centres[np.arange(len(ids)) % 3] + 0.05 * rng.normal(size=(len(ids), dim))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", vectors.astype(np.float32))
    with open(folder / "ids.csv", "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([["id"], *([name] for name in ids)])
    return folder / "embeddings.npy", folder / "ids.csv"


def test_markup_and_escape_codes_in_names_are_printed_as_text(tmp_path: Path) -> None:
    ids = ["a[/b].png", "\x1b[2J.png", "[bold]x[/bold].png", "c.png", "d.png", "e.png"]
    npy, id_list = precomputed(tmp_path / "in", ids)
    out = tmp_path / "R[/b]\x1b[2J"

    result = pixclust("similar", "a[/b].png", "--in", npy, "--ids", id_list, "--top", "5", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    for shown in ("a[/b].png", "\\x1b[2J.png", "[bold]x[/bold].png", f"table: {tmp_path}/R[/b]\\x1b[2J/similar.csv"):
        assert shown in result.stdout

    failed = pixclust("similar", "c.png", "--in", npy, "--ids", tmp_path / "no[/b]\x1b[2J.csv")
    assert failed.returncode == 2 and "\x1b" not in failed.stderr
    lines = failed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no[/b]\\x1b[2J.csv" in lines[0]


def test_label_tables_neutralise_formulas_and_read_back(tmp_path: Path) -> None:
    from pixclust.curation.lookalikes import find_similar
    from pixclust.labelling.label import read_labelled_list
    from pixclust.labelling.workflows import label

    ids = ["-x.png", "=a.png", "@b.png", "+c.png", "'=q.png", "=cmd|' /C calc'!A0", "plain.png", "p2.png", "p3.png"]
    npy, id_list = precomputed(tmp_path / "in", ids)
    classes = ['=HYPERLINK("http://evil.example","click")', "@SUM(1+1)", "-2+3"]
    refs = tmp_path / "refs.csv"
    with open(refs, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([["class", "id"], *([name, ids[row]] for row, name in enumerate(classes))])

    out = tmp_path / "out"
    run = label(npy, refs, out=out, ids=id_list, suggest=2, estimate_none=False)
    find_similar(npy, ["-x.png"], ids=id_list, out=out)
    for table in ("labels.csv", "suggested.csv", "similar.csv"):
        with open(out / table, newline="", encoding="utf-8") as stream:
            header, *rows = list(csv.reader(stream))
        assert rows
        text = [
            column
            for column, name in enumerate(header)
            if name in ("path", "label", "current_label", "answer", "query")
        ]
        numbers = [column for column in range(len(header)) if column not in text]
        for row in rows:
            assert not any(row[column].startswith(FORMULA_START) for column in text), row
            [float(row[column]) for column in numbers]

    expected = [(path, run.result.label_name(row)) for row, path in enumerate(run.result.paths)]
    assert read_labelled_list(out / "labels.csv") == expected
    assert {label for _, label in expected} == set(classes)


def test_class_folders_named_like_formulas_label_and_read_back(tmp_path: Path) -> None:
    from pixclust.labelling.label import read_labelled_list
    from pixclust.labelling.workflows import label
    from pixclust.runs.pipeline import embed
    from pixclust.runs.record import RunRecord

    images = write_digit_tree(tmp_path / "images", per_class=8)
    run_dir = tmp_path / "run"
    embeddings = embed(images, model="hog", out=run_dir, quiet=True)
    RunRecord(model=embeddings.model.to_dict()).write(run_dir / "run.json")
    # A folder name cannot hold "/", so no "http://" here.
    classes = {"0": '=HYPERLINK("evil.example","click")', "1": "@SUM(1+1)", "6": "+6"}
    for digit, name in classes.items():
        (tmp_path / "refs" / name).mkdir(parents=True)
        for example in sorted((images / digit).rglob("*.png"))[:2]:
            shutil.copy(example, tmp_path / "refs" / name / example.name)

    run = label(run_dir, tmp_path / "refs", out=tmp_path / "out", estimate_none=False)
    cells = [row["label"] for row in read_csv(tmp_path / "out" / "labels.csv")]
    assert set(cells) == {"'" + name for name in classes.values()}
    expected = [(path, run.result.label_name(row)) for row, path in enumerate(run.result.paths)]
    assert read_labelled_list(tmp_path / "out" / "labels.csv") == expected
