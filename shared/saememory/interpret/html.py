"""A picture of a query: its hits as one self-contained HTML page.

Each hit shows its scores and what moved it, its text with the matched words highlighted (hover
one for the query word it matched, its contribution and the features behind it), the word pairs
with their features (phrase and label; hover one, given the SAE, for the messages it fires on
most), and the share of the SAE score they carry. Every text of the
memory is escaped. ``SAEMemory.search(..., words=True)`` or ``explain`` gives hits with the word
pairs; the command ``saememory explain`` writes the page for a saved memory.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saememory.interpret.explain import Hit, feature_text

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d2430; max-width: 980px; }
h1 { font-size: 20px; margin: 0 0 4px; } .query { font-size: 16px; color: #334; margin-bottom: 18px; }
.hit { border: 1px solid #d8dde6; border-radius: 8px; padding: 12px 16px; margin: 12px 0; }
.head { font-size: 13px; color: #556; } .rank { font-weight: 700; color: #1d2430; margin-right: 6px; }
.text { font-size: 15px; margin: 8px 0; line-height: 1.5; }
mark { background: #ffe58a; border-radius: 3px; padding: 0 2px; }
.badge { display: inline-block; font-size: 12px; border-radius: 10px; padding: 1px 8px; margin-left: 6px; }
.up { background: #dff3e4; color: #1f6b35; } .down { background: #fde2e1; color: #8a1c17; }
table { border-collapse: collapse; font-size: 13px; margin-top: 6px; }
td, th { border-bottom: 1px solid #eef0f4; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { color: #556; font-weight: 600; } .share { font-size: 12px; color: #556; margin-top: 4px; }
.feature { color: #445; } .ex { border-bottom: 1px dotted #889; cursor: help; } .num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def hits_html(query: str, hits: Sequence[Hit], title: str = "saememory: why these memories", sae: Any = None) -> str:
    """The HTML page of a query's hits (see the module doc).

    Args:
        query: The query.
        hits: Its hits, best first.
        title: The page title. Defaults to ``"saememory: why these memories"``.
        sae: The SAE behind the hits (``SAEMemory.encoder.sae``): hovering a feature then shows the
            messages it fires on most (its ``examples``). Defaults to None (no examples).
    """
    examples = getattr(sae, "examples", None) or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<div class='query'>Query: <b>{html.escape(query)}</b></div>"]
    for hit in hits:
        parts.append(_hit_html(hit, examples))
    if not hits:
        parts.append("<p>No message matched.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, query: str, hits: Sequence[Hit], title: str = "saememory: why these memories",
               sae: Any = None) -> Path:
    """Writes ``hits_html`` to ``path`` (UTF-8) and returns the path."""
    path = Path(path)
    path.write_text(hits_html(query, hits, title, sae), encoding="utf-8")
    return path


def _feature_html(feature: dict[str, Any], examples: dict[int, list[str]]) -> str:
    """A feature as ``#id 'phrase' (label) (+contribution)``; hover for its top-activating examples."""
    text = html.escape(feature_text(feature)) + f" (+{feature['contribution']:.3f})"
    shown = examples.get(feature["id"])
    elsewhere = feature.get("label_elsewhere")  # withheld: it does not fit here (interpret.fit)
    if not shown and not elsewhere:
        return text
    tip = " ".join(([f"Read elsewhere as '{elsewhere}', which does not fit here."] if elsewhere else [])
                   + (["Fires most on: " + " | ".join(example[:200] for example in shown[:3])] if shown else []))
    return f"<span class='ex' title='{html.escape(tip, quote=True)}'>{text}</span>"


def _hit_html(hit: Hit, examples: dict[int, list[str]]) -> str:
    head = (f"<span class='rank'>#{hit.rank}</span> score {hit.score:.2f} (z {hit.calibrated_score:.1f}) · "
            f"dense {hit.dense_score:.2f} · SAE {hit.sparse_score:.2f} · BM25 {hit.bm25_score:.2f} · "
            f"{html.escape(hit.role)} · {html.escape(str(hit.session_id))} · {html.escape(str(hit.timestamp or hit.time or ''))}")
    for name, value in hit.adjustments.items():
        head += f"<span class='badge {'up' if value > 0 else 'down'}'>{html.escape(name)} {value:+.2f}</span>"
    rows = []
    for pair in hit.matched_words:
        features = ", ".join(_feature_html(f, examples) for f in pair["features"])
        rows.append(f"<tr><td>{html.escape(pair['query_word'])}</td><td>→ {html.escape(pair['message_word'])}</td>"
                    f"<td class='num'>+{pair['contribution']:.3f}</td><td class='feature'>{features}</td></tr>")
    table = ""
    if rows:
        table = ("<table><tr><th>query word</th><th>message word</th><th class='num'>contribution</th><th>features</th></tr>"
                 + "".join(rows) + f"</table><div class='share'>These pairs carry {hit.words_share:.0%} of the SAE score.</div>")
    elif hit.shared_features:
        features = ", ".join(_feature_html(f, examples) for f in hit.shared_features)
        table = (f"<div class='share'>Matched on {features}: {hit.explained_share:.0%} of the SAE score "
                 "(search with words=True to see the words).</div>")
    return (f"<div class='hit'><div class='head'>{head}</div><div class='text'>{_highlighted(hit)}</div>{table}</div>")


def _highlighted(hit: Hit) -> str:
    """The hit's text, escaped, with each word that matched a query word marked."""
    matched: dict[str, list[str]] = {}
    for pair in hit.matched_words:
        matched.setdefault(pair["message_word"].lower(), []).append(
            f"{pair['query_word']} ~ {pair['message_word']}: +{pair['contribution']:.3f}"
            + "".join(f"; {feature_text(f)}" for f in pair["features"][:2]))
    out, last = [], 0
    for match in re.finditer(r"\w+", hit.content):
        notes = matched.get(match.group(0).lower())
        if notes:
            out.append(html.escape(hit.content[last:match.start()]))
            out.append(f"<mark title='{html.escape(' | '.join(notes), quote=True)}'>{html.escape(match.group(0))}</mark>")
            last = match.end()
    out.append(html.escape(hit.content[last:]))
    return "".join(out)
