"""The report: figures (PNG and SVG) and a self-contained HTML page plus a Markdown summary.

``figures`` draws (matplotlib), ``page`` assembles and writes; both only present what ``analysis``
computes from the run folders. Imports run downwards: reporting -> analysis -> results; nothing below
imports the report."""

from forgetlab.reporting.page import write_report

__all__ = ["write_report"]
