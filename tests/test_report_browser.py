"""report.html in a real browser: Debian's Chromium driven by Playwright, offline, from file://."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import write_digit_tree

import pixclust
from pixclust.pipeline import RunConfig

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("Chromium is not installed here (CI installs Debian's chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    root = write_digit_tree(base / "images", per_class=40)
    (root / "notes.png").write_text("not a picture")
    pixclust.run(RunConfig(source=str(root), out=str(base / "run"), k=4, maps=["pca", "tsne"]), quiet=True)
    return base / "run" / "report.html"


@pytest.fixture(scope="module")
def page(report_file: Path):
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1300, "height": 1000})

        def block_network(route) -> None:
            url = route.request.url
            if url.startswith(("file:", "data:", "blob:")):
                route.continue_()
            else:
                outside.append(url)
                route.abort()

        context.route("**/*", block_network)
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(report_file.as_uri())
        tab.wait_for_selector("#map2d .scatterlayer .point")
        yield tab
        assert outside == [], f"the report tried to reach the network: {outside[:3]}"
        assert errors == [], errors
        browser.close()


def test_one_gallery_per_cluster_and_no_broken_image(page) -> None:
    assert page.locator(".gallery").count() == 4
    assert page.locator(".gallery img").count() == 120
    broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
    assert broken == 0
    assert page.locator("#errors td").all_inner_texts()[1:] == ["not an image", "content looks like text, not an image"]
    sizes = page.locator(".gallery .size").all_inner_texts()
    assert sum(int(text.split()[0]) for text in sizes) == 120


def _point_on_screen(page, trace: int, index: int) -> tuple[float, float]:
    return page.evaluate(
        """([trace, index]) => {
            const gd = document.getElementById('map2d');
            const layout = gd._fullLayout, data = gd._fullData[trace], box = gd.getBoundingClientRect();
            return [box.left + layout._size.l + layout.xaxis.l2p(data.x[index]),
                    box.top + layout._size.t + layout.yaxis.l2p(data.y[index])];
        }""",
        [trace, index],
    )


def test_hovering_a_point_shows_its_thumbnail_and_name(page) -> None:
    page.locator("#map2d").scroll_into_view_if_needed()
    x, y = _point_on_screen(page, trace=1, index=0)
    page.mouse.move(x, y)
    tip = page.locator("#tip")
    tip.wait_for(state="visible", timeout=5000)
    expected = page.evaluate(
        "() => { const gd = document.getElementById('map2d'); "
        "const data = JSON.parse(document.getElementById('report-data').textContent); "
        "return data.points.name[gd._fullData[1].customdata[0]]; }"
    )
    assert tip.locator(".tip-name").inner_text() == expected
    assert page.evaluate("document.querySelector('#tip img').naturalWidth") > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-hover.png"))


def test_clicking_a_point_filters_the_galleries(page) -> None:
    x, y = _point_on_screen(page, trace=2, index=0)
    page.mouse.click(x, y)
    visible = page.locator(".gallery:visible")
    visible.first.wait_for()
    assert visible.count() == 1 and visible.first.get_attribute("data-cluster") == "2"
    page.locator("#filters button[data-cluster='all']").click()
    assert page.locator(".gallery:visible").count() == 4
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)


def test_map_switches_to_tsne_and_the_3d_view_draws(page) -> None:
    page.locator("#map-buttons button[data-map='tsne']").click()
    page.wait_for_function("document.querySelector('#map-buttons button.active').dataset.map === 'tsne'")
    assert page.locator("#map2d .scatterlayer .point").count() == 120
    assert page.evaluate("document.getElementById('map3d')._fullData[0].type") == "scatter3d"
