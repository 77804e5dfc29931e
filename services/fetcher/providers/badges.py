"""A generated logo for any ticker: the fallback of every provider without one of its own."""

from __future__ import annotations

import base64
import hashlib

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
BADGE_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000"]


def logo_data_uri(symbol: str) -> str:
    """An SVG badge with the ticker's letters, as a data URI."""
    colour = BADGE_COLOURS[int(hashlib.sha256(symbol.encode()).hexdigest(), 16) % 7]
    letters = symbol[:4]
    size = 30 if len(letters) <= 2 else 22 if len(letters) == 3 else 17
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
        f'<rect width="64" height="64" rx="14" fill="{colour}"/>'
        f'<text x="32" y="32" dy=".35em" text-anchor="middle" font-family="Helvetica,Arial,'
        f'sans-serif" font-weight="700" font-size="{size}" fill="#fff">{letters}</text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
