"""docs/ARCHITECTURE.md's module map names every module in the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "pixclust"
# A heading per subpackage, "**Embedding** (`pixclust/embedding/`)", then one table row per module.
HEADING = re.compile(r"^\*\*[^*]+\*\* \(`pixclust/([a-z_/]*)`")
ROW = re.compile(r"^\| `([^`]+)` \|")


def mapped_modules() -> set[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text[text.index("## Modules") : text.index("### Where the code differs")]
    package, named = "", set()
    for line in section.splitlines():
        if heading := HEADING.match(line):
            package = heading.group(1)
        elif row := ROW.match(line):
            named.add(package + row.group(1))
    return named


def test_the_module_map_matches_the_tree() -> None:
    named = mapped_modules()
    modules = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        # A subpackage's __init__ only says what the subpackage holds; the map's heading does that.
        if path.name != "__init__.py" or path.parent in (PACKAGE, PACKAGE / "cli")
    }
    covered = {name for name in named if name.endswith("/")}
    unmapped = {module for module in modules - named if not any(module.startswith(folder) for folder in covered)}
    assert not unmapped, f"modules missing from docs/ARCHITECTURE.md: {sorted(unmapped)}"
    missing = {name for name in named if not (PACKAGE / name).exists()}
    assert not missing, f"docs/ARCHITECTURE.md names modules that do not exist: {sorted(missing)}"
