"""The report: figures (PNG and SVG) and a self-contained HTML page plus a Markdown summary."""

from forgetlab.reporting.page import write_report

__all__ = ["write_report"]
