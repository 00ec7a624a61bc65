"""Editing in report.html, in a real browser: select, move, mark, rename, merge, undo, keep, save edits.json.

Driven as tests/test_report_browser.py drives it: Debian's Chromium through Playwright, offline, from file://.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from browser import ARTIFACTS, offline_tab, skip_without_chromium
from conftest import write_digit_tree

import pixclust
from pixclust.runs.pipeline import RunConfig

skip_without_chromium()

pytestmark = pytest.mark.slow

# The galleries as shown: each one's cluster id, title and images; and the map's traces with their points.
SNAPSHOT = """() => ({
    galleries: [...document.querySelectorAll('.gallery')].map((s) => [
        s.dataset.cluster, s.querySelector('h3 .name').textContent, s.querySelector('.size').textContent,
        [...s.querySelectorAll('.grid img')].map((i) => Number(i.dataset.point))]),
    chips: [...document.querySelectorAll('#filters button')].map((b) => b.textContent),
    targets: [...document.querySelectorAll('#move-target option')].map((o) => [o.value, o.textContent]),
    map: document.getElementById('map2d')._fullData.map((t) => [t.meta, t.name, t.marker.color, [...t.customdata]]),
    edits: document.getElementById('edit-count').dataset.count,
})"""


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("editing")
    root = write_digit_tree(base / "images", per_class=20)
    pixclust.run(RunConfig(source=str(root), out=str(base / "run"), k=4, maps=["pca"]), quiet=True)
    return base / "run" / "report.html"


class Dialogs:
    """Answers window.prompt with the answers queued, in order, and accepts (and keeps) every alert."""

    def __init__(self) -> None:
        self.answers: list[str | None] = []
        self.alerts: list[str] = []

    def __call__(self, dialog) -> None:
        if dialog.type == "prompt":
            answer = self.answers.pop(0)
            dialog.dismiss() if answer is None else dialog.accept(answer)
        else:
            self.alerts.append(dialog.message)
            dialog.accept()


@pytest.fixture(scope="module")
def browser_tab(report_file: Path):
    dialogs = Dialogs()
    with offline_tab(report_file, on_dialog=dialogs) as tab:
        yield tab, dialogs


@pytest.fixture
def page(browser_tab, report_file: Path):
    """The report as the run made it: no edits kept from another test."""
    tab, dialogs = browser_tab
    tab.goto(report_file.as_uri())
    tab.evaluate("localStorage.clear()")
    tab.reload()
    tab.wait_for_selector("#map2d .scatterlayer .point")
    dialogs.answers.clear()
    dialogs.alerts.clear()
    yield tab
    assert dialogs.answers == [], "a prompt the test expected did not come"


@pytest.fixture(scope="module")
def data(browser_tab) -> dict:
    tab, _ = browser_tab
    return tab.evaluate("JSON.parse(document.getElementById('report-data').textContent)")


def members(data: dict, cluster: int) -> list[int]:
    return next(c["members"] for c in data["clusters"] if c["id"] == cluster)


def snapshot(page) -> dict:
    return page.evaluate(SNAPSHOT)


def done(page, action) -> None:
    """Carries out ``action`` (a function) and waits until the page has redrawn what it changed."""
    count = page.evaluate("window.pixclustTimings.length")
    action()
    page.wait_for_function("(count) => window.pixclustTimings.length > count", arg=count)


def gallery(page, cluster: int):
    return page.locator(f".gallery[data-cluster='{cluster}']")


def click_image(page, point: int, *, shift: bool = False) -> None:
    image = page.locator(f".gallery img[data-point='{point}']")
    done(page, lambda: image.click(modifiers=["Shift"] if shift else []))


def selection(page) -> list[int]:
    return page.evaluate(
        "[...document.querySelectorAll('.gallery img.selected')].map((i) => Number(i.dataset.point)).sort((a, b) => a - b)"
    )


def move_to(page, target: str) -> None:
    page.locator("#move-target").select_option(target)
    done(page, lambda: page.locator("#move-apply").click())


def rename(page, dialogs: Dialogs, cluster: int, name: str, *, refused: bool = False) -> None:
    dialogs.answers.append(name)
    button = gallery(page, cluster).locator(".rename")
    if refused:
        alerts = len(dialogs.alerts)
        button.click()
        for _ in range(100):
            if len(dialogs.alerts) > alerts:
                break
            page.wait_for_timeout(50)
        assert len(dialogs.alerts) == alerts + 1, f"{name!r} was not refused"
    else:
        done(page, button.click)


def merge(page, cluster: int, into: int) -> None:
    done(page, lambda: gallery(page, cluster).locator("select.merge-into").select_option(str(into)))


def undo(page) -> None:
    done(page, lambda: page.locator("#undo").click())


def gallery_points(page, cluster: int) -> list[int]:
    return [
        int(p) for p in gallery(page, cluster).locator(".grid img").evaluate_all("(l) => l.map((i) => i.dataset.point)")
    ]


def test_rename_a_cluster_and_refuse_names_that_cannot_be(page, browser_tab) -> None:
    _, dialogs = browser_tab
    rename(page, dialogs, 0, "  zeros ")
    assert gallery(page, 0).locator("h3 .name").inner_text() == "zeros"
    assert page.locator("#filters button[data-cluster='0']").inner_text() == "zeros"
    assert page.locator("#move-target option[value='0']").inner_text() == "zeros"
    assert page.evaluate("document.getElementById('map2d')._fullData[0].name") == "zeros"
    assert gallery(page, 1).locator("select.merge-into option[value='0']").inner_text() == "zeros"
    assert page.locator("#edit-count").inner_text() == "1 edit"
    refused = [
        "",
        "a/b",
        "a\\b",
        "_outliers",
        "_excluded",
        "_new",
        "noise",
        "=SUM(1)",
        "cluster_00",
        "zeros",
        "cluster_02",
    ]
    for name in refused:
        rename(page, dialogs, 1, name, refused=True)
    assert len(dialogs.alerts) == len(refused), dialogs.alerts
    assert "formula" in dialogs.alerts[7]
    assert "already names another cluster" in dialogs.alerts[-1]
    assert gallery(page, 1).locator("h3 .name").inner_text().startswith("cluster_01")
    assert page.locator("#edit-count").inner_text() == "1 edit"
    # Its own first name back is no rename at all.
    rename(page, dialogs, 0, "cluster_00")
    assert page.locator("#edit-count").inner_text() == "0 edits"


def test_merge_moves_every_image_into_the_cluster_chosen(page, data) -> None:
    two, three = members(data, 2), members(data, 3)
    merge(page, 3, into=2)
    assert gallery(page, 3).count() == 0
    assert gallery_points(page, 2) == two + three
    assert gallery(page, 2).locator(".size").inner_text().startswith(f"{len(two) + len(three)} images")
    traces = page.evaluate("document.getElementById('map2d')._fullData.map((t) => [t.meta, t.customdata.length])")
    assert traces == [[0, len(members(data, 0))], [1, len(members(data, 1))], [2, len(two) + len(three)]]
    assert page.locator("#filters button[data-cluster='3']").count() == 0
    assert page.locator("#move-target option[value='3']").count() == 0
    assert page.locator("#edit-count").inner_text() == "1 edit"


def test_click_and_shift_click_select_and_move_to_a_new_cluster(page, browser_tab, data) -> None:
    _, dialogs = browser_tab
    one = members(data, 1)
    click_image(page, one[1])
    click_image(page, one[4], shift=True)
    assert selection(page) == sorted(one[1:5])
    assert page.locator("#selected-count").inner_text() == "4 selected"
    click_image(page, one[2])
    assert selection(page) == sorted([one[1], one[3], one[4]])
    # A shift-click in another gallery is a click.
    zero = members(data, 0)
    click_image(page, zero[0], shift=True)
    click_image(page, zero[0])
    click_image(page, one[2])
    assert selection(page) == sorted(one[1:5])
    dialogs.answers.append("odd ones")
    move_to(page, "new")
    new = page.locator(".gallery").nth(4)
    assert new.locator("h3 .name").inner_text() == "odd ones"
    made = int(new.get_attribute("data-cluster"))
    assert made not in {c["id"] for c in data["clusters"]}
    assert gallery_points(page, made) == one[1:5]
    assert gallery_points(page, 1) == [one[0], *one[5:]]
    assert selection(page) == [] and page.locator("#selected-count").inner_text() == "0 selected"
    assert page.locator("#edit-count").inner_text() == "4 edits"
    trace = page.evaluate(
        "(id) => { const t = document.getElementById('map2d')._fullData.find((t) => t.meta === id); "
        "return [t.name, [...t.customdata]]; }",
        made,
    )
    assert trace == ["odd ones", one[1:5]]
    assert page.locator(f"#move-target option[value='{made}']").inner_text() == "odd ones"


def isolated_points(page, count: int) -> list[tuple[float, float, float, int]]:
    """Screen position, distance to the nearest other point and index of the ``count`` most isolated points."""
    return page.evaluate(
        """(count) => {
            const gd = document.getElementById('map2d');
            const layout = gd._fullLayout, box = gd.getBoundingClientRect();
            const points = gd._fullData.flatMap((data) => data.x.map((x, i) => ({
                point: data.customdata[i], x: box.left + layout._size.l + layout.xaxis.l2p(x),
                y: box.top + layout._size.t + layout.yaxis.l2p(data.y[i]) })));
            for (const p of points) {
                p.gap = Math.min(...points.filter((q) => q !== p).map((q) => Math.hypot(q.x - p.x, q.y - p.y)));
            }
            points.sort((a, b) => b.gap - a.gap || a.point - b.point);
            return points.slice(0, count).map((p) => [p.x, p.y, p.gap, p.point]);
        }""",
        count,
    )


def lasso(page, x: float, y: float, radius: float) -> None:
    """Draws a lasso with the mouse: a circle around (x, y)."""
    page.mouse.move(x + radius, y)
    page.mouse.down()
    for step in range(1, 33):
        angle = 2 * math.pi * step / 32
        page.mouse.move(x + radius * math.cos(angle), y + radius * math.sin(angle), steps=2)
    page.mouse.up()


def test_lasso_on_the_map_selects_its_points_and_they_can_be_excluded(page, data) -> None:
    page.locator("#map2d").scroll_into_view_if_needed()
    page.locator("#map2d .modebar-btn[data-val='lasso']").click()
    assert page.evaluate("document.getElementById('map2d')._fullLayout.dragmode") == "lasso"
    picked = isolated_points(page, 2)
    for number, (x, y, gap, _) in enumerate(picked, start=1):
        assert gap > 8, "the map has no point far enough from the others to lasso alone"
        done(page, lambda x=x, y=y, gap=gap: lasso(page, x, y, min(gap * 0.6, 25)))
        # A second lasso adds to the selection.
        assert page.locator("#selected-count").inner_text() == f"{number} selected"
    points = sorted(point for *_, point in picked)
    assert selection(page) == points
    done(page, lambda: page.locator("#mark-exclude").click())
    assert sorted(gallery_points(page, -3)) == points
    assert gallery(page, -3).locator("h3 .name").inner_text() == "_excluded"
    assert gallery(page, -3).locator(".rename").count() == 0
    excluded = page.evaluate(
        "document.getElementById('map2d')._fullData.filter((t) => t.meta === -3).map((t) => [...t.customdata])"
    )
    assert [sorted(trace) for trace in excluded] == [points]
    # The drag mode chosen stays after the map is drawn again.
    assert page.evaluate("document.getElementById('map2d')._fullLayout.dragmode") == "lasso"
    assert page.locator("#edit-count").inner_text() == "2 edits"
    assert selection(page) == []


def test_doesnt_belong_moves_to_outliers_and_clear_selection_clears(page, data) -> None:
    zero = members(data, 0)
    click_image(page, zero[3])
    click_image(page, zero[7])
    done(page, lambda: page.locator("#mark-outlier").click())
    assert gallery_points(page, -2) == sorted([zero[3], zero[7]], key=zero.index)
    assert gallery(page, -2).locator("h3 .name").inner_text() == "_outliers"
    assert page.locator("#filters button[data-cluster='-2']").count() == 1
    click_image(page, zero[0])
    done(page, lambda: page.locator("#clear-selection").click())
    assert selection(page) == [] and page.locator("#mark-outlier").is_disabled()


def test_undo_goes_back_one_step_at_a_time_to_the_run_as_it_was(page, browser_tab, data) -> None:
    _, dialogs = browser_tab
    states = [snapshot(page)]
    rename(page, dialogs, 2, "twos")
    states.append(snapshot(page))
    click_image(page, members(data, 0)[0])
    click_image(page, members(data, 0)[2], shift=True)
    dialogs.answers.append("new one")
    move_to(page, "new")
    states.append(snapshot(page))
    merge(page, 1, into=2)
    states.append(snapshot(page))
    click_image(page, members(data, 3)[0])
    done(page, lambda: page.locator("#mark-outlier").click())
    states.append(snapshot(page))
    click_image(page, members(data, 3)[0])
    move_to(page, "2")
    states.append(snapshot(page))
    click_image(page, members(data, 3)[1])
    done(page, lambda: page.locator("#mark-exclude").click())
    states.append(snapshot(page))
    assert len({json.dumps(state) for state in states}) == len(states), "every action changes what is shown"
    for state in reversed(states[:-1]):
        undo(page)
        assert snapshot(page) == state
    assert page.locator("#undo").is_disabled()
    assert page.locator("#edit-count").inner_text() == "0 edits"
    assert page.evaluate("Object.keys(localStorage).filter((key) => key.startsWith('pixclust-edits:'))") == []


def test_reopening_the_page_restores_the_edits_and_their_undo(page, browser_tab, data) -> None:
    _, dialogs = browser_tab
    one = members(data, 1)
    rename(page, dialogs, 0, "zeros")
    before = snapshot(page)
    click_image(page, one[0])
    click_image(page, one[1])
    dialogs.answers.append("kept")
    move_to(page, "new")
    merge(page, 3, into=0)
    edited = snapshot(page)
    run = data["run"]
    assert page.evaluate("(run) => localStorage.getItem('pixclust-edits:' + run) !== null", run)
    page.reload()
    page.wait_for_selector("#map2d .scatterlayer .point")
    assert snapshot(page) == edited
    undo(page)
    undo(page)
    assert snapshot(page) == before


def test_a_damaged_record_in_the_browser_is_ignored(page, data) -> None:
    page.evaluate(
        "(run) => localStorage.setItem('pixclust-edits:' + run, JSON.stringify({version: 1, assign: [0, 99]}))",
        data["run"],
    )
    page.reload()
    page.wait_for_selector("#map2d .scatterlayer .point")
    assert page.locator(".gallery").count() == 4
    assert "could not be read" in page.locator("#edit-message").inner_text()


def test_saved_edits_json_is_the_difference_from_the_run(page, browser_tab, data, report_file: Path, tmp_path) -> None:
    _, dialogs = browser_tab
    zero, one, two, three = (members(data, cluster) for cluster in range(4))
    names = {c["id"]: c["name"] for c in data["clusters"]}
    path = data["points"]["path"]
    rename(page, dialogs, 0, "zero")
    merge(page, 3, into=2)
    # Three of cluster 1 to a new cluster, which is then renamed: the moves name it as it is called now.
    click_image(page, one[0])
    click_image(page, one[2], shift=True)
    dialogs.answers.append("odd")
    move_to(page, "new")
    made = int(page.locator(".gallery").nth(3).get_attribute("data-cluster"))
    rename(page, dialogs, made, "odd2")
    # An image of the merged cluster 3, now in 2's gallery, moved on to cluster 0.
    click_image(page, three[0])
    move_to(page, "0")
    # Moved away and back, marked and moved back: no edit.
    click_image(page, zero[-1])
    move_to(page, "1")
    click_image(page, zero[-1])
    move_to(page, "0")
    click_image(page, zero[2])
    done(page, lambda: page.locator("#mark-outlier").click())
    click_image(page, zero[2])
    move_to(page, "0")
    # Outliers, and exclusions (one of them first marked as an outlier).
    click_image(page, zero[1])
    done(page, lambda: page.locator("#mark-outlier").click())
    click_image(page, one[5])
    click_image(page, two[0])
    done(page, lambda: page.locator("#mark-exclude").click())
    click_image(page, two[1])
    done(page, lambda: page.locator("#mark-outlier").click())
    click_image(page, two[1])
    done(page, lambda: page.locator("#mark-exclude").click())
    # An action undone leaves nothing in the file.
    rename(page, dialogs, 1, "ones")
    undo(page)

    with page.expect_download() as download_info:
        page.locator("#save-edits").click()
    download = download_info.value
    assert download.suggested_filename == "edits.json"
    saved = tmp_path / "edits.json"
    download.save_as(saved)
    edits = json.loads(saved.read_text(encoding="utf-8"))
    moves = sorted([(point, "odd2") for point in one[:3]] + [(three[0], names[0])])
    assert edits == {
        "version": 1,
        "run": data["run"],
        "rename": {names[0]: "zero"},
        "merge": [[names[2], names[3]]],
        "move": [{"path": path[point], "to": to} for point, to in moves],
        "outlier": [path[zero[1]]],
        "exclude": [path[point] for point in sorted([one[5], two[0], two[1]])],
        "pin": {"together": [], "apart": []},
    }
    assert page.locator("#edit-count").inner_text() == "10 edits"

    # pixclust reads it, and applied to (a copy of) the run it gives the grouping the page showed.
    run_copy = tmp_path / "run"
    shutil.copytree(report_file.parent, run_copy, symlinks=True)
    result = pixclust.apply(run_copy, saved, quiet=True)
    shown = {name: int(size.split()[0]) for _, name, size, _ in snapshot(page)["galleries"] if int(size.split()[0])}
    assert {name: count for name, count in result.clusters.items() if count} == {
        name.split(": ")[0]: count for name, count in shown.items()
    }
    # The folders hold the grouping, the excluded images in none of them.
    folders = {entry.name: len(list(entry.iterdir())) for entry in (run_copy / "clusters").iterdir()}
    assert folders == {name: count for name, count in result.clusters.items() if name != "_excluded"}
    # The rebuilt report shows it as the run's own, with nothing left to edit.
    page.goto((run_copy / "report.html").as_uri())
    page.wait_for_selector("#map2d .scatterlayer .point")
    headings = {heading.split(": ")[0] for heading in page.locator(".gallery h3 .name").all_inner_texts()}
    assert {"zero", "odd2", "_outliers", "_excluded"} <= headings and names[3] not in headings
    assert page.locator("#edit-count").inner_text() == "0 edits"


def test_per_action_timings_are_recorded(page, browser_tab, data) -> None:
    """Not a check of speed (machines differ): the times each action took, printed and kept in test-artifacts."""
    _, dialogs = browser_tab
    one = members(data, 1)
    click_image(page, one[0])
    click_image(page, one[3], shift=True)
    move_to(page, "0")
    rename(page, dialogs, 0, "timed")
    merge(page, 2, into=0)
    click_image(page, one[5])
    done(page, lambda: page.locator("#mark-outlier").click())
    click_image(page, one[6])
    done(page, lambda: page.locator("#mark-exclude").click())
    undo(page)
    with page.expect_download():
        page.locator("#save-edits").click()
    timings = page.evaluate("window.pixclustTimings")
    actions = [entry["action"] for entry in timings]
    assert actions == [
        "click", "shift-click", "move", "rename", "merge", "click", "doesn't belong", "click", "exclude",
        "undo exclude", "save",
    ]  # fmt: skip
    assert all(entry["ms"] >= 0 for entry in timings)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report-edit-timings.json").write_text(json.dumps(timings, indent=1))
    print("\nper-action times on a report of", len(data["points"]["path"]), "images:")
    for entry in timings:
        print(
            f"  {entry['action']:>16}: {entry['ms']:7.1f} ms"
            + (f" (page {entry['dom_ms']} ms)" if "dom_ms" in entry else "")
        )


def synthetic_report(report_file: Path, out: Path, n: int = 10_000, k: int = 12) -> Path:
    """The small report's page with its data replaced by ``n`` made-up images in ``k`` clusters (thumbnails reused)."""
    import random

    html = report_file.read_text(encoding="utf-8")
    start = html.index('id="report-data">') + len('id="report-data">')
    end = html.index("</script>", start)
    data = json.loads(html[start:end])
    data["run"] += "-10k"  # file:// pages share their localStorage: none of the small report's edits
    rng = random.Random(0)
    xs = [round(i % k * 3 + rng.gauss(0, 1), 4) for i in range(n)]
    ys = [round(i % k % 4 * 3 + rng.gauss(0, 1), 4) for i in range(n)]
    zs = [round(rng.gauss(0, 1), 4) for _ in range(n)]
    data["clusters"] = [
        {
            "id": c,
            "name": f"cluster_{c:02d}",
            "shows": "",
            "size": len(range(c, n, k)),
            "colour": f"#{(c * 2654435761) % 0xFFFFFF:06x}",
            "members": list(range(c, n, k)),
        }
        for c in range(k)
    ]
    data["points"] = {
        "name": [f"image_{i:05d}.png" for i in range(n)],
        "path": [f"/images/image_{i:05d}.png" for i in range(n)],
        "cluster": [i % k for i in range(n)],
        "thumb": [i % len(data["thumbs"]) for i in range(n)],
    }
    data["maps"] = {"pca": {"2d": [xs, ys], "3d": [xs, ys, zs]}}
    data["duplicates"]["groups"] = []
    data["flags"].update(rows=[], flags=[], counts=[])
    payload = json.dumps(data, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    out.write_text(html[:start] + payload + html[end:], encoding="utf-8")
    return out


def test_per_action_timings_on_10000_images(browser_tab, report_file: Path, tmp_path: Path) -> None:
    """As above on a page of 10,000 made-up images (the map in WebGL); printed and kept, not checked against a limit."""
    page, dialogs = browser_tab
    big = synthetic_report(report_file, tmp_path / "report-10k.html")
    page.goto(big.as_uri())
    page.evaluate("localStorage.clear()")
    page.wait_for_function("document.getElementById('map2d')._fullData?.length === 12")
    assert page.evaluate("document.getElementById('map2d')._fullData[0].type") == "scattergl"
    grid = lambda cluster: gallery(page, cluster).locator(".grid img")  # noqa: E731
    done(page, lambda: grid(1).nth(0).click())
    done(page, lambda: grid(1).nth(40).click(modifiers=["Shift"]))
    move_to(page, "0")
    gallery(page, 2).locator(".show-all").click()
    done(page, lambda: grid(2).nth(0).click())
    done(page, lambda: grid(2).last.click(modifiers=["Shift"]))
    assert page.locator("#selected-count").inner_text() == "834 selected"
    dialogs.answers.append("big new one")
    move_to(page, "new")
    rename(page, dialogs, 0, "renamed")
    merge(page, 3, into=4)
    done(page, lambda: grid(5).nth(0).click())
    done(page, lambda: page.locator("#mark-outlier").click())
    done(page, lambda: grid(6).nth(0).click())
    done(page, lambda: page.locator("#mark-exclude").click())
    undo(page)
    assert page.locator("#edit-count").inner_text() == f"{41 + 834 + 1 + 1 + 1:,} edits"
    timings = page.evaluate("window.pixclustTimings")
    page.evaluate("localStorage.clear()")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report-edit-timings-10k.json").write_text(json.dumps(timings, indent=1))
    print("\nper-action times on a report of 10,000 images:")
    for entry in timings:
        page_ms = f" (page {entry['dom_ms']} ms)" if "dom_ms" in entry else ""
        print(f"  {entry['action']:>16}: {entry['ms']:7.1f} ms{page_ms}")
