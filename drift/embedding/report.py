"""The embedding part of an episode's HTML report: Evidently cannot render a vector column, so
embedding features get a small section of their own with each feature's statistic and, when
it drifted, the evidence: the current records most unlike the reference (trace and span ids,
snippets only under content capture) and the clusters the reference lacks.

Everything shown comes from the drift result itself (nothing is read back from Kafka), and
every value is HTML-escaped: snippets are client text.

>>> from observer.core.records import EmbeddingEvidence, FeatureDrift, UnlikeRecord
>>> f = FeatureDrift(name="prompt_embedding", kind="embedding", method="model", statistic=0.93,
...                  threshold=0.55, drifted=True, evidence=EmbeddingEvidence(unlike=[
...                      UnlikeRecord(trace_id="ab12", span_id="cd34", score=0.99,
...                                   snippet="<script>")]))
>>> html_text = embedding_section([f])
>>> "ab12" in html_text, "&lt;script&gt;" in html_text, "<script>" in html_text
(True, True, False)
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from observer.core.records import FeatureDrift, UnlikeRecord

SECTION_ID = "observer-embedding-drift"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _records(rows: Sequence[UnlikeRecord]) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr><td><code>{_e(r.trace_id)}</code></td><td><code>{_e(r.span_id)}</code></td>"
        f"<td>{r.score:.3f}</td><td>{_e(r.snippet) if r.snippet is not None else ''}</td></tr>"
        for r in rows
    )
    return ("<table border='1' cellpadding='4' style='border-collapse:collapse'>"
            "<tr><th>trace id</th><th>span id</th><th>unlike score</th><th>snippet</th></tr>"
            f"{body}</table>")


def _feature(f: FeatureDrift) -> str:
    verdict = "drifted" if f.drifted else "no drift"
    parts = [f"<h3>{_e(f.name)}: {verdict}</h3>",
             f"<p>method <b>{_e(f.method)}</b>, statistic {_number(f.statistic)}, "
             f"threshold {_number(f.threshold)}</p>"]
    if f.evidence is not None:
        if f.evidence.unlike:
            parts += ["<h4>Current records most unlike the reference</h4>",
                      _records(f.evidence.unlike)]
        for i, c in enumerate(f.evidence.novel_clusters, start=1):
            parts += [f"<h4>New cluster {i}: {c.share_current:.1%} of the window "
                      f"({c.size} records), {c.share_reference:.1%} of the reference</h4>",
                      _records(c.examples)]
    return "".join(parts)


def embedding_section(features: Sequence[FeatureDrift]) -> str:
    """The HTML section for the embedding features among ``features`` ('' when none)."""
    embedded = [f for f in features if f.kind == "embedding"]
    if not embedded:
        return ""
    return (f"<section id='{SECTION_ID}' style='font-family:sans-serif;margin:16px'>"
            "<h2 style='font-size:18px'>Embedding features</h2>"
            + "".join(_feature(f) for f in embedded) + "</section>")


def with_section(page: str, section: str) -> str:
    """``page`` with ``section`` at the top of its body."""
    if not section:
        return page
    if "<body>" in page:
        return page.replace("<body>", f"<body>\n{section}", 1)
    return section + page


def standalone(title: str, details: dict[str, Any], section: str) -> str:
    """A page of its own, for a window whose features are all embeddings."""
    rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{_e(k)}</th>"
                   f"<td>{_e(v)}</td></tr>" for k, v in details.items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title></head>"
            f"<body><header id='observer-report-header' style='font-family:sans-serif;margin:16px'>"
            f"<h1 style='font-size:20px'>{_e(title)}</h1><table>{rows}</table></header>"
            f"{section}</body></html>")
