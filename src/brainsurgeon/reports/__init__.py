"""Plots (matplotlib Agg) and the self-contained HTML report."""

from .html import REPORT_FILE, build_report, find_plots, write_report
from .plots import counts_grid, histogram_grid, line_plot, scatter

__all__ = [
    "REPORT_FILE",
    "build_report",
    "counts_grid",
    "find_plots",
    "histogram_grid",
    "line_plot",
    "scatter",
    "write_report",
]
