"""A query and its top matches side by side, as torchreid's visrank draws them.

Green border: the match has the query's identity; red: another identity; grey: an identity is not
known (images from a folder). Each match shows its rank and distance. Drawn with PIL (no figure
machinery), so thousands of queries take seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from ..data.image_dataset import read_image
from ..data.layouts import Sample
from ..fileio import atomic_path

SAME_ID = (40, 170, 60)
OTHER_ID = (210, 40, 40)
UNKNOWN_ID = (150, 150, 150)
QUERY = (40, 80, 200)


def border_colour(query: Sample, match: Sample) -> tuple[int, int, int]:
    """Green for the query's identity, red for another, grey when either identity is unknown (< 0)."""
    if query.pid < 0 or match.pid < 0:
        return UNKNOWN_ID
    return SAME_ID if match.pid == query.pid else OTHER_ID


def save_ranked_list(query: Sample, matches: Sequence[Sample], distances: Sequence[float], out_png: str | Path, *,
                     size: tuple[int, int] = (64, 128), border: int = 4, caption: int = 14) -> Path:
    """One row: the query (blue border), a gap, then its matches nearest first; ``size`` = (w, h) of a picture."""
    width, height = size
    cell_w, cell_h = width + 2 * border, height + 2 * border
    gap = cell_w // 2
    canvas = Image.new("RGB", (cell_w * (len(matches) + 1) + gap + 4 * len(matches), cell_h + caption), "white")
    draw = ImageDraw.Draw(canvas)

    def paste(sample: Sample, x: int, colour: tuple[int, int, int], text: str) -> None:
        draw.rectangle((x, 0, x + cell_w - 1, cell_h - 1), fill=colour)
        canvas.paste(read_image(sample.path).resize(size, Image.Resampling.BICUBIC), (x + border, border))
        draw.text((x + 2, cell_h + 1), text, fill=(0, 0, 0))

    paste(query, 0, QUERY, "query")
    x = cell_w + gap
    for rank, (match, distance) in enumerate(zip(matches, distances), start=1):
        paste(match, x, border_colour(query, match), f"{rank}: {distance:.2f}")
        x += cell_w + 4
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG")
    return out_png
