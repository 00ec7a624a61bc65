"""Plots (matplotlib PNGs) and the self-contained HTML report of a run folder."""

from pixclust.report.build import REPORT_FILE, build_report

__all__ = ["REPORT_FILE", "build_report"]
