"""The report: figures (PNG and SVG) and a self-contained HTML page plus a Markdown summary."""

from forgetlab.report.page import write_report

__all__ = ["write_report"]
