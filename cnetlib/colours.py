"""Colours: the 148 CSS colour names written as words, as Fill50K's prompts write them (chapter 01).

``"pale golden rod"`` for palegoldenrod: every name is split into the words of
:data:`CSS_WORDS`, and :func:`color_rgb` accepts either spelling.
"""
from __future__ import annotations

import difflib
from typing import Sequence

from matplotlib.colors import CSS4_COLORS, to_rgb

#: The words the 148 CSS colour names are made of; Fill50K's prompts write each name
#: as words ("light golden rod yellow" for lightgoldenrodyellow). "marine" is no longer
#: used (an earlier version spelt "medium aqua marine") but stays: the shipped models'
#: tokenizer vocabulary (``cnetlib.unet.default_vocabulary``) has it.
CSS_WORDS = frozenset("""
alice almond antique aqua aquamarine azure beige bisque black blanched blue blush brick brown burly cadet
chartreuse chiffon chocolate coral corn cream crimson cyan dark deep dew dim dodger drab fire floral flower
forest fuchsia gainsboro ghost gold golden gray green grey honey hot indian indigo ivory khaki lace lavender
lawn lemon light lime linen magenta marine maroon medium midnight mint misty moccasin navajo navy old olive
orange orchid pale papaya peach peru pink plum powder puff purple rebecca red rod rose rosy royal saddle
salmon sandy sea shell sienna silk silver sky slate smoke snow spring steel tan teal thistle tomato
turquoise violet wheat whip white wood yellow
""".split())


def _as_words(name: str) -> str | None:
    """``"lightgoldenrodyellow"`` -> ``"light golden rod yellow"``: the longest known word first, backtracking."""
    if not name:
        return ""
    for end in range(len(name), 0, -1):
        if name[:end] in CSS_WORDS:
            rest = _as_words(name[end:])
            if rest is not None:
                return (name[:end] + " " + rest).strip()
    return None


#: The 148 CSS colour names written as words, sorted, and their RGB (from matplotlib's CSS4 table).
CSS_COLORS: dict[str, tuple[int, int, int]] = dict(sorted(
    (_as_words(name), tuple(round(255 * v) for v in to_rgb(hex_))) for name, hex_ in CSS4_COLORS.items()))


def colour_name(name: str) -> str:
    """A CSS colour name, however written ("PaleGoldenRod", "pale golden rod"), as words; unknown names
    are refused with the closest matches."""
    key = " ".join(name.lower().split())
    if key in CSS_COLORS:
        return key
    joined = key.replace(" ", "")
    for k in CSS_COLORS:
        if k.replace(" ", "") == joined:
            return k
    close = difflib.get_close_matches(key, list(CSS_COLORS), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown colour name {name!r}: expected one of the 148 CSS colour names written as words.{hint}")


def color_rgb(name: str) -> tuple[int, int, int]:
    """RGB of a CSS colour given by name ("pale golden rod", "palegoldenrod" or "PaleGoldenRod")."""
    return CSS_COLORS[colour_name(name)]


def check_palette(palette: Sequence[str]) -> tuple[str, ...]:
    """Normalise a palette to CSS names written as words; reject unknown or too few colours."""
    if isinstance(palette, str):
        raise TypeError(f"palette: expected a sequence of colour names, got the string {palette!r}")
    names = tuple(colour_name(p) for p in palette)
    if len(set(names)) < 2:
        raise ValueError(f"palette: expected at least 2 distinct colours, got {list(palette)!r}")
    return names


#: Eight well-separated CSS colours for the toy chapters (32 px): a palette small
#: enough for a 1M-parameter model to learn on a CPU, with multi-word names so the
#: tokenizer still has to read phrases.
TOY_PALETTE: tuple[str, ...] = (
    "red", "gold", "lime green", "deep sky blue", "blue", "dark violet", "white", "black",
)
#: Every CSS colour, as the authors' Fill50K uses (the 512 px data).
FULL_PALETTE: tuple[str, ...] = tuple(CSS_COLORS)
