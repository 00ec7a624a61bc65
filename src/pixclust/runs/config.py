"""The settings of a run (``RunConfig``), each checked once, in the words of whoever set it."""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import KW_ONLY, MISSING, Field, InitVar, asdict, dataclass, field, fields
from typing import Any

from pixclust.clustering.clusterer import CLUSTER_METHODS
from pixclust.clustering.maps import DEFAULT_MAPS, MAP_METHODS
from pixclust.clustering.reduce import REDUCE_METHODS, is_whole_number
from pixclust.curation.flags import DEFAULT_FLAG_THRESHOLD, checked_flag_threshold
from pixclust.embedding.decode import DEFAULT_MAX_PIXELS
from pixclust.embedding.embedder import DEFAULT_BATCH_SIZE
from pixclust.embedding.engines import DEFAULT_RAY_WAIT_S, ENGINES, check_engine
from pixclust.embedding.ink_choice import INK_CHOICES
from pixclust.embedding.models import DEFAULT_MODEL, INK_SUFFIX, resolve_model
from pixclust.embedding.runtimes import PRECISIONS, RUNTIMES
from pixclust.errors import UsageError

PIPELINES = ("auto", "fixed")


def resolve_pipeline(pipeline: str, method: str | None, reduce: str | None) -> str:
    """``"auto"`` or ``"fixed"``; an explicit ``method`` or ``reduce`` asks for the fixed pipeline."""
    if pipeline not in PIPELINES:
        raise UsageError(f"--pipeline {pipeline!r} is not known; choose one of {', '.join(PIPELINES)}")
    if method is not None and method not in CLUSTER_METHODS:
        raise UsageError(f"--method {method!r} is not known; choose one of {', '.join(CLUSTER_METHODS)}")
    if reduce is not None and reduce not in REDUCE_METHODS:
        raise UsageError(f"--reduce {reduce!r} is not known; choose one of {', '.join(REDUCE_METHODS)}")
    return "fixed" if method is not None or reduce is not None else pipeline


@dataclass
class RunConfig:
    """Every choice of a ``pixclust cluster`` run; saved in run.json so the run can be repeated.

    Checked once, here, whoever made it (Python, the CLI, a run.json given to
    ``--config``): each setting's type and range, and any setting the caller chose
    that this run would ignore. ``given`` names the settings the caller chose: by
    default each one that differs from its default; the CLI passes the options
    typed, so values replayed from a run.json never count, and one that clashes
    with an option typed gives way to it. ``from_cli`` has messages name options
    (``--k``) rather than keywords (``k=``). Neither is saved.
    """

    source: str
    out: str
    model: str = DEFAULT_MODEL
    weights: str | None = None
    k: int | str = "auto"
    k_min: int = 2
    k_max: int = 20
    pipeline: str = "auto"
    method: str | None = None
    reduce: str | None = None
    n_components: int | None = None
    refine: bool = True
    seed: int = 0
    truth: str | None = None
    copy: bool = False
    move: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    include_hidden: bool = False
    runtime: str = "auto"
    precision: str = "auto"
    report: bool = True
    maps: list[str] = field(default_factory=lambda: list(DEFAULT_MAPS))
    engine: str = "local"
    address: str | None = None
    actor_cpus: int | None = None
    ray_wait: int = DEFAULT_RAY_WAIT_S
    flag_threshold: float = DEFAULT_FLAG_THRESHOLD
    name_folders: bool = False
    # Whether a network gets pictures of ink on paper as grey ink on white (pixclust.embedding.ink).
    ink: str = "auto"
    _: KW_ONLY
    given: InitVar[Collection[str] | None] = None
    from_cli: InitVar[bool] = False

    def __post_init__(self, given: Collection[str] | None, from_cli: bool) -> None:
        if given is None:
            given = [spec.name for spec in fields(self) if not _is_default(spec, getattr(self, spec.name))]
        words = _Wording(from_cli, frozenset(given))
        self._check_each(words)
        self._check_together(words)

    def _check_each(self, words: _Wording) -> None:
        for name in ("source", "out", "weights", "truth"):
            setattr(self, name, _checked_path(words, name, getattr(self, name)))
        for name in ("model", "address"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value) and not (name == "address" and value is None):
                raise UsageError(f"{words.said(name, value)} must be a name")
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if not (value is None and name in ("method", "reduce")) and (
                not isinstance(value, str) or value not in choices
            ):
                raise UsageError(f"{words.said(name, value)} is not known; choose one of {', '.join(choices)}")
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{words.said(name, getattr(self, name))} must be {words.typed_bools}")
        for name, (low, high) in _WHOLE_NUMBERS.items():
            value = getattr(self, name)
            if value is None and name in ("workers", "n_components", "actor_cpus"):
                continue
            if not is_whole_number(value) or value < low or (high is not None and value > high):
                limits = f">= {low}" if high is None else f"from {low} to {high}"
                raise UsageError(f"{words.said(name, value)} must be a whole number {limits}")
            setattr(self, name, int(value))
        self.k = _checked_k(words, self.k)
        self.flag_threshold = checked_flag_threshold(
            self.flag_threshold, words.said("flag_threshold", self.flag_threshold)
        )
        if not isinstance(self.maps, (list, tuple)) or not all(isinstance(name, str) for name in self.maps):
            raise UsageError(f"{words.said('maps', self.maps)} must be a list of map names: {', '.join(MAP_METHODS)}")
        unknown = [name for name in self.maps if name not in MAP_METHODS]
        if unknown:
            raise UsageError(
                f"{words.said('maps', self.maps)}: {unknown[0]!r} is not known; choose from {', '.join(MAP_METHODS)}"
            )
        self.maps = list(dict.fromkeys(self.maps))

    def _check_together(self, words: _Wording) -> None:
        if self.copy and self.move:
            if len(words.given & {"copy", "move"}) != 1:
                raise UsageError(
                    f"{words.said('copy', True)} and {words.said('move', True)} both say what goes into clusters/; choose one"
                )
            self.copy, self.move = "copy" in words.given, "move" in words.given
        if self.engine != "ray" and self.address is not None:
            self.address = words.replayed_only(
                "address", self.address, f"names a Ray cluster; add {words.typed('engine', 'ray')}, or drop it"
            )
        if self.engine == "ray" and self.workers is not None:
            self.workers = words.replayed_only(
                "workers",
                self.workers,
                f"sets the local engine's decode processes; drop it with {words.typed('engine', 'ray')}",
            )
        if self.pipeline == "auto" and "pipeline" in words.given:
            for name in ("method", "reduce"):
                if getattr(self, name) is not None:
                    why = f"belongs to the fixed pipeline, and {words.said('pipeline', 'auto')} asks for the auto one; drop one"
                    setattr(self, name, words.replayed_only(name, getattr(self, name), why))
        self.pipeline = resolve_pipeline(self.pipeline, self.method, self.reduce)
        if self.model.endswith(INK_SUFFIX) and self.ink == "off":
            raise UsageError(
                f"{words.said('model', self.model)} turns ink on paper to grey, and {words.said('ink', 'off')} "
                f"asks not to; drop one"
            )
        if self.k_min > self.k_max:
            raise UsageError(
                f"k range {self.k_min}..{self.k_max} is empty; need 2 <= {words.name('k_min')} <= {words.name('k_max')}"
            )
        if self.method == "hdbscan" and self.k != "auto":
            raise UsageError(
                f"{words.said('k', self.k)} cannot be used with hdbscan, which finds the number of clusters itself"
            )
        scans_k = self.k == "auto" and self.method != "hdbscan"
        unused = {
            "n_components": self.pipeline == "auto" or self.reduce == "none",
            "refine": self.pipeline == "fixed",
            "k_min": not scans_k,
            "k_max": not scans_k,
            "maps": not self.report,
            "actor_cpus": self.engine != "ray",
            "ray_wait": self.engine != "ray",
            "ink": "ink" in words.given and resolve_model(self.model).family != "timm",
        }
        for name in sorted(words.given):
            if unused.get(name):
                raise UsageError(
                    f"{words.said(name, getattr(self, name))} is not used: {_UNUSED_BECAUSE[name]}; drop it"
                )
        check_engine(
            self.engine,
            self.address,
            self.workers,
            actor_cpus=self.actor_cpus if self.engine == "ray" else None,
            ray_wait=self.ray_wait if self.engine == "ray" else None,
        )

    def settings(self) -> dict[str, Any]:
        """Every setting by name, as run.json keeps them and ``from_dict`` takes them back."""
        return asdict(self)

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], *, given: Collection[str] | None = None, from_cli: bool = False
    ) -> RunConfig:
        """A config from settings by name (a run.json's "config"); ``given`` and ``from_cli`` as for the class."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"run config has unknown settings {', '.join(unknown)}; was it written by pixclust?")
        # A folder left out is reported by the checks, as one that is not a path, rather than as a TypeError.
        return cls(**({"source": None, "out": None} | values), given=given, from_cli=from_cli)


_BOOLS = ("refine", "copy", "move", "include_hidden", "report", "name_folders")
_CHOICES = {
    "pipeline": PIPELINES,
    "method": CLUSTER_METHODS,
    "reduce": REDUCE_METHODS,
    "runtime": RUNTIMES,
    "precision": PRECISIONS,
    "engine": ENGINES,
    "ink": INK_CHOICES,
}
# (smallest, largest or None); scikit-learn takes seeds below 2**32, and workers=0 decodes in this process.
_WHOLE_NUMBERS = {
    "k_min": (2, None),
    "k_max": (2, None),
    "seed": (0, 2**32 - 1),
    "batch_size": (1, None),
    "max_pixels": (1, None),
    "workers": (0, None),
    "n_components": (1, None),
    "actor_cpus": (1, None),
    "ray_wait": (1, None),
}
_UNUSED_BECAUSE = {
    "n_components": "only the fixed pipeline's pca, umap, lle and spectral reductions keep a number of dimensions",
    "refine": "only the auto pipeline refines its clusters",
    "k_min": "a range of k is scanned only when k is 'auto' and the method is not hdbscan",
    "k_max": "a range of k is scanned only when k is 'auto' and the method is not hdbscan",
    "maps": "maps are drawn in the report, and this run writes none",
    "actor_cpus": "only the ray engine starts actors",
    "ray_wait": "only the ray engine waits for a cluster",
    "ink": "only a network's input is turned; the model is not a network",
}
_OPTION_NAMES = {"source": "SOURCE", "maps": "--map"}


def _is_default(spec: Field[Any], value: Any) -> bool:
    default = spec.default_factory() if spec.default_factory is not MISSING else spec.default
    return type(value) is type(default) and value == default


def _checked_path(words: _Wording, setting: str, value: Any) -> str | None:
    """``value`` as a path string (``os.PathLike`` taken too); None only for the settings that may be left out."""
    if value is None and setting in ("weights", "truth"):
        return None
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str) or not path or "\0" in path:
        raise UsageError(f"{words.said(setting, value)} must be a path (not empty, no NUL character)")
    return path


def _checked_k(words: _Wording, k: Any) -> int | str:
    """``"auto"`` or a whole number >= 2; a string of ASCII digits counts as one (the CLI passes text)."""
    if isinstance(k, str) and k == "auto":
        return k
    # isdigit() alone takes "²" and other digits int() refuses; 18 digits stay under int()'s length limit.
    number = int(k) if isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 18 else k
    if not is_whole_number(number) or number < 2:
        raise UsageError(f"{words.said('k', k)} must be a whole number >= 2, or 'auto'")
    return int(number)


@dataclass(frozen=True)
class _Wording:
    """Names a setting in a message the way the caller set it: ``k=0``, ``--k '0'``, or ``"k": 0 in --config``."""

    from_cli: bool
    given: frozenset[str]

    def name(self, setting: str) -> str:
        return _OPTION_NAMES.get(setting, "--" + setting.replace("_", "-")) if self.from_cli else setting

    @property
    def typed_bools(self) -> str:
        return "true or false" if self.from_cli else "True or False"

    def typed(self, setting: str, value: Any) -> str:
        """How the caller would set ``setting`` to ``value``: ``engine='ray'`` or ``--engine ray``."""
        return f"{self.name(setting)} {value}" if self.from_cli else f"{setting}={value!r}"

    def said(self, setting: str, value: Any) -> str:
        if not self.from_cli:
            return f"{setting}={value!r}"
        if setting not in self.given:
            return f'"{setting}": {json.dumps(value, default=str)} in --config'
        if isinstance(value, bool):
            return (
                "--link"
                if setting == "copy" and not value
                else f"--{'' if value else 'no-'}{setting.replace('_', '-')}"
            )
        shown = ",".join(value) if setting == "maps" else value
        return f"{self.name(setting)} {shown!r}" if isinstance(shown, str) else f"{self.name(setting)} {shown}"

    def replayed_only(self, setting: str, value: Any, why: str) -> None:
        """None for a setting the choices made leave without a use: quietly when replayed, an error when chosen."""
        if setting in self.given:
            raise UsageError(f"{self.said(setting, value)} {why}")
        return None
