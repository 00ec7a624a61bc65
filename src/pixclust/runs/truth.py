"""Ground-truth classes for scoring a clustering, when the user has them.

``folders``: the class of an image is the name of the folder it sits in
(images directly in the source root have none). A CSV: a header with a
path-like column (``path``, ``file``, ``filename``, ``image``, ``id``) and a
class column (``label``, ``class``, ``category``, ``truth``); paths may be
absolute, relative to the source root, or bare file names when those are
unique.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pixclust.errors import UsageError

TRUTH_FOLDERS = "folders"
_PATH_COLUMNS = ("path", "file", "filename", "image", "id")
_LABEL_COLUMNS = ("label", "class", "category", "truth")


def load_truth(spec: str, paths: Sequence[str], root: str | Path) -> list[str | None]:
    """Class per path (None where unknown) from ``"folders"`` or a CSV file path."""
    if spec == TRUTH_FOLDERS:
        return truth_from_folders(paths, root)
    return truth_from_csv(Path(spec), paths, root)


def truth_from_folders(paths: Sequence[str], root: str | Path) -> list[str | None]:
    root_abs = os.path.abspath(root)
    labels: list[str | None] = []
    for path in paths:
        parent = os.path.dirname(os.path.abspath(path))
        labels.append(None if parent == root_abs else os.path.basename(parent))
    return labels


def truth_from_csv(csv_path: Path, paths: Sequence[str], root: str | Path) -> list[str | None]:
    table = _read_truth_csv(csv_path)
    root_abs = os.path.abspath(root)
    by_key: dict[str, str] = {}
    for key, label in table:
        by_key[os.path.normpath(key if os.path.isabs(key) else os.path.join(root_abs, key))] = label
    name_counts = Counter(os.path.basename(key) for key, _ in table)
    by_name = {os.path.basename(key): label for key, label in table if name_counts[os.path.basename(key)] == 1}
    return [by_key.get(os.path.normpath(os.path.abspath(path)), by_name.get(os.path.basename(path))) for path in paths]


def _read_truth_csv(csv_path: Path) -> list[tuple[str, str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            fields = [name.strip().lower() for name in reader.fieldnames or []]
            path_col = next((c for c in _PATH_COLUMNS if c in fields), None)
            label_col = next((c for c in _LABEL_COLUMNS if c in fields), None)
            if path_col is None or label_col is None:
                raise UsageError(
                    f"--truth {csv_path}: needs a header with a path column ({', '.join(_PATH_COLUMNS)}) "
                    f"and a class column ({', '.join(_LABEL_COLUMNS)}); found {', '.join(fields) or 'no header'}"
                )
            original = {name.strip().lower(): name for name in reader.fieldnames or []}
            return [
                (row[original[path_col]].strip(), row[original[label_col]].strip())
                for row in reader
                if row.get(original[path_col]) and row.get(original[label_col])
            ]
    except OSError as error:
        raise UsageError(
            f"--truth {csv_path}: cannot read it ({error.strerror}); pass 'folders' or a readable CSV"
        ) from error
    except (UnicodeDecodeError, csv.Error) as error:
        raise UsageError(
            f"--truth {csv_path}: not a UTF-8 CSV file ({error}); save it as CSV with a header row"
        ) from error
