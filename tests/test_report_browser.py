"""report.html in a real browser: Debian's Chromium driven by Playwright, offline, from file://."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import ARTIFACTS, offline_tab, skip_without_chromium
from conftest import plant_duplicates, write_digit_tree
from PIL import Image

import pixclust
from pixclust.runs.pipeline import RunConfig

skip_without_chromium()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    root = write_digit_tree(base / "images", per_class=40)
    (root / "notes.png").write_text("not a picture")
    plant_duplicates(root)
    # A picture of one tone, which the Flags section must show as "uniform".
    Image.new("RGB", (64, 64), (128, 128, 128)).save(root / "blank.png")
    pixclust.run(RunConfig(source=str(root), out=str(base / "run"), k=4, maps=["pca", "tsne"]), quiet=True)
    return base / "run" / "report.html"


@pytest.fixture(scope="module")
def page(report_file: Path):
    with offline_tab(report_file) as tab:
        yield tab


def test_one_gallery_per_cluster_and_no_broken_image(page) -> None:
    assert page.locator(".gallery").count() == 4
    assert page.locator(".gallery img").count() == 124
    broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
    assert broken == 0
    assert page.locator("#errors td").all_inner_texts()[1:] == ["not an image", "content looks like text, not an image"]
    sizes = page.locator(".gallery .size").all_inner_texts()
    assert sum(int(text.split()[0]) for text in sizes) == 124


def _isolated_point(page, trace: int) -> tuple[float, float, int]:
    """Screen position and index of the point of ``trace`` farthest from any other point.

    Points can overlap (an exact copy sits on its original, and far-off photos
    squeeze the digits together), and then the mouse would hit another one.
    """
    return page.evaluate(
        """(trace) => {
            const gd = document.getElementById('map2d');
            const layout = gd._fullLayout, box = gd.getBoundingClientRect();
            const points = gd._fullData.flatMap((data, t) => data.x.map((x, i) => ({
                t, i, x: box.left + layout._size.l + layout.xaxis.l2p(x),
                y: box.top + layout._size.t + layout.yaxis.l2p(data.y[i]) })));
            let best = null;
            for (const p of points.filter((p) => p.t === trace)) {
                const gap = Math.min(...points.filter((q) => q !== p).map((q) => Math.hypot(q.x - p.x, q.y - p.y)));
                if (best === null || gap > best.gap) best = { ...p, gap };
            }
            return [best.x, best.y, best.i];
        }""",
        trace,
    )


def test_hovering_a_point_shows_its_thumbnail_and_name(page) -> None:
    page.locator("#map2d").scroll_into_view_if_needed()
    x, y, index = _isolated_point(page, trace=1)
    page.mouse.move(x, y)
    tip = page.locator("#tip")
    tip.wait_for(state="visible", timeout=5000)
    expected = page.evaluate(
        "(index) => { const gd = document.getElementById('map2d'); "
        "const data = JSON.parse(document.getElementById('report-data').textContent); "
        "return data.points.name[gd._fullData[1].customdata[index]]; }",
        index,
    )
    assert tip.locator(".tip-name").inner_text() == expected
    assert page.evaluate("document.querySelector('#tip img').naturalWidth") > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-hover.png"))


def test_clicking_a_point_filters_the_galleries(page) -> None:
    x, y, _ = _isolated_point(page, trace=2)
    page.mouse.click(x, y)
    visible = page.locator(".gallery:visible")
    visible.first.wait_for()
    assert visible.count() == 1 and visible.first.get_attribute("data-cluster") == "2"
    page.locator("#filters button[data-cluster='all']").click()
    assert page.locator(".gallery:visible").count() == 4
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)


def test_duplicate_groups_show_their_images_and_keepers_and_lead_to_clusters(page) -> None:
    card = page.locator("#duplicates-card")
    assert card.locator(".dup-group").count() == 2
    assert card.locator(".dup-group img").count() == 4
    drawn = page.evaluate("[...document.querySelectorAll('#duplicates img')].filter(i => i.naturalWidth > 0).length")
    assert drawn == 4
    assert card.locator(".keeper img").count() == 2
    near = card.locator(".dup-group[data-kind='near']")
    assert near.locator(".keeper img").get_attribute("alt") == "photo.jpg"
    assert near.locator(".keeper figcaption").inner_text() == "keep, 640×427"
    assert card.locator("p").first.inner_text().startswith("2 groups, 2 redundant images")
    card.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    card.screenshot(path=str(ARTIFACTS / "report-duplicates.png"))
    cluster = page.evaluate(
        "() => { const data = JSON.parse(document.getElementById('report-data').textContent); "
        "return data.points.cluster[data.points.name.indexOf('photo-small.jpg')]; }"
    )
    near.locator("img[alt='photo-small.jpg']").click()
    visible = page.locator(".gallery:visible")
    assert visible.count() == 1 and visible.first.get_attribute("data-cluster") == str(cluster)
    page.locator("#filters button[data-cluster='all']").click()


def test_the_flags_section_shows_flagged_images_worst_first_and_filters_by_flag(page) -> None:
    card = page.locator("#flags-card")
    assert card.locator("h2").inner_text() == "Flags"
    blank = card.locator("figure[data-flags*='uniform'] img[alt='blank.png']")
    assert blank.count() == 1
    # Certain whatever the collection: the worst come first.
    assert card.locator("figure img").first.get_attribute("alt") == "blank.png"
    assert "flagged" in card.locator("p").first.inner_text()
    card.locator("#flag-filters button[data-flag='uniform']").click()
    assert card.locator("figure").count() == card.locator("figure[data-flags*='uniform']").count() >= 1
    card.locator("#flag-filters button[data-flag='all']").click()
    blank.click()
    visible = page.locator(".gallery:visible")
    assert visible.count() == 1 and visible.locator("img[alt='blank.png']").count() == 1
    page.locator("#filters button[data-cluster='all']").click()


def test_gallery_headings_and_the_map_legend_say_what_each_cluster_shows(page, report_file: Path) -> None:
    import csv

    with open(report_file.parent / "clusters.csv", newline="") as stream:
        shows = {row["cluster"]: row["name"] for row in csv.DictReader(stream)}
    assert all(shows.values()), shows
    headings = page.locator(".gallery h3").all_inner_texts()
    assert sorted(heading.split("\n")[0] for heading in headings) == sorted(f"{c}: {n}" for c, n in shows.items())
    legend = page.locator("#map2d .legendtext").all_text_contents()
    assert sorted(legend) == sorted(f"{c}: {n}" for c, n in shows.items())


def test_map_switches_to_tsne_and_the_3d_view_draws(page) -> None:
    page.locator("#map-buttons button[data-map='tsne']").click()
    page.wait_for_function("document.querySelector('#map-buttons button.active').dataset.map === 'tsne'")
    assert page.locator("#map2d .scatterlayer .point").count() == 124
    assert page.evaluate("document.getElementById('map3d')._fullData[0].type") == "scatter3d"
