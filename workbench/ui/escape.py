"""User text shown as text: run names, tags, user and suite names, URL values.

Streamlit renders the strings of ``st.markdown``, captions, alerts, and widget labels as GitHub
markdown with its own extras (``:material/icon:``, ``:red[text]``, ``$LaTeX$``); Plotly renders
a subset of HTML (``<a href>``, ``<b>``, ``<br>``) in trace names, titles, ticks and hovers. A
name like ``![x](http://host/t.png)`` would fetch an image (a tracking request) and
``<a href="http://evil">x</a>`` would be a live link. ``plain`` and ``plain_label`` make such
text render literally; every page and figure passes user text through one of them.

CommonMark lets any ASCII punctuation be escaped with a backslash
(https://spec.commonmark.org/0.31.2/#backslash-escapes); the backslash itself is not shown.
"""

from __future__ import annotations

import html
import re
from typing import Any

__all__ = ["plain", "plain_label"]

# What gives text a meaning in Streamlit's markdown anywhere in a line: emphasis and code
# (*`~), links and images ([]!; a "(" after an escaped "]" is plain text), autolinks and HTML
# (<>&), e-mail autolinks (@), LaTeX ($), headings (#), tables (|), and the backslash itself.
_ANYWHERE = re.compile(r"([\\`*~\[\]!<>&@$#|])")
# An underscore between letters or digits (small_cnn) never makes emphasis; only one at a word's
# edge does. A colon followed by a space (``page: text``) starts no directive (``:red[x]``,
# ``:material/x:``), emoji shortcode or ``http://`` autolink; any other colon might.
_EDGE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|:(?!\s)")
# GFM turns a bare "www.host" into a link: escaping its dot breaks the match.
_WWW = re.compile(r"(?i)\b(www)\.")
# Only at the start of a line: a list item ("- x", "+ x", "1. x", "1) x"), a setext underline.
_LINE_START = re.compile(r"^([-+=])|^(\d+)([.)])")


def plain(text: Any) -> str:
    """``text`` (any value, as ``str``) escaped for Streamlit markdown: it renders as written,
    with no link, image, emphasis, icon, colour or formula. Newlines become spaces (a user value
    must not start a markdown block of its own). ``[x](http://h)`` becomes
    ``\\[x\\](http\\://h)``; ``small_cnn`` and ``page: text`` stay as they are.
    """
    text = re.sub(r"[\r\n\u2028\u2029]+", " ", str(text))
    text = _ANYWHERE.sub(r"\\\1", text)
    text = _EDGE.sub(lambda m: "\\" + m[0], text)
    text = _WWW.sub(r"\1\\.", text)
    return _LINE_START.sub(lambda m: "\\" + m[1] if m[1] else m[2] + "\\" + m[3], text)


def plain_label(text: Any) -> str:
    """``text`` escaped for Plotly text (trace names, titles, ticks, hovers, legends): ``<``,
    ``>`` and ``&`` as entities, which Plotly shows as the characters; no tag is ever made."""
    return html.escape(str(text), quote=False)
