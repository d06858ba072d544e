"""Self-contained HTML reports of ``mkn locate`` / ``mkn experiment`` run directories.

``write_report(run_dir)`` writes ``run_dir/report.html``: one file, plots inlined as base64 PNG,
one inline script (sortable, filterable tables; allowed by its hash in the page's
Content-Security-Policy) and no external requests, so it opens offline and can be mailed or
archived as is.
See :func:`mkn.report.html.write_report`.
"""

from mkn.report.html import write_report

__all__ = ["write_report"]
