"""Where the plots put markers and labels so that none hides another.

:func:`dodge` sets markers of equal or near-equal value side by side; :func:`place_labels` puts each
point's label of the accuracy-vs-GBOPs plot beside its point, clear of every marker and of the labels
placed before, over as few error bars and lines as room allows. Positions are display pixels unless
said otherwise (points come in data coordinates; the font size and the crowd radius are in points);
boxes are ``[N, 4]`` arrays of x0, y0, x1, y1.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

# Point labels (accuracy vs GBOPs): font size (points); pixels kept free around a label, and beside
# another label (so that two side by side do not read as one); how far a label may go from its point
# (label heights); how near other points make a point crowded (its label is placed first; points);
# points along a line joining a label to its point that later labels keep clear of.
LABEL_FONT = 6.5
LABEL_PAD = 1.5
LABEL_SPACE = 6.0
LABEL_REACH = 12
CROWD = 36.0
LEADER_SAMPLES = 12


def dodge(xs: Sequence[float], lows: Sequence[float], highs: Sequence[float], width: float,
          widest: float = math.inf, bounds: tuple[float, float] = (-math.inf, math.inf)) -> list[float]:
    """Horizontal centres for markers drawn at ``xs``, each covering ``[lows[i], highs[i]]`` vertically
    (its marker and error bar), so that none hides another: markers whose vertical extents overlap end
    up at least ``width`` apart. Markers that would come closer form a cluster, laid out side by side
    in the order of their xs (then of their index), centred on the mean of their xs as far as
    ``bounds`` (lowest, highest centre) allow; the others keep their x. A cluster is at most ``widest``
    from its first centre to its last: a larger one is laid out closer than ``width``, its markers
    overlapping in part. All lengths in one unit (display pixels for a plot).
    """
    clusters = [[i] for i in range(len(xs))]
    positions = [float(x) for x in xs]
    while (clash := _clash(positions, lows, highs, width, clusters)) is not None:
        merged = sorted(clusters[clash[0]] + clusters[clash[1]], key=lambda i: (xs[i], i))
        step = min(width, widest / (len(merged) - 1))
        half = step * (len(merged) - 1) / 2
        centre = min(max(statistics.fmean(xs[i] for i in merged), bounds[0] + half), bounds[1] - half)
        for rank, i in enumerate(merged):
            positions[i] = centre - half + rank * step
        clusters = [c for k, c in enumerate(clusters) if k not in clash] + [merged]
    return positions


def _clash(positions: Sequence[float], lows: Sequence[float], highs: Sequence[float], width: float,
           clusters: Sequence[Sequence[int]]) -> tuple[int, int] | None:
    """The indices of two clusters holding markers that would overlap (:func:`dodge`), or None."""
    owner = {i: k for k, members in enumerate(clusters) for i in members}
    order = sorted(range(len(positions)), key=positions.__getitem__)
    for rank, i in enumerate(order):
        for j in order[rank + 1:]:
            if positions[j] - positions[i] >= width * (1 - 1e-9):  # laid-out neighbours touch, no more
                break
            if owner[i] != owner[j] and lows[i] < highs[j] and lows[j] < highs[i]:
                return owner[i], owner[j]
    return None



def place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], radii: Sequence[float],
                 solid: Any, thin: Any, lines: Any) -> int:
    """Label each point (data ``xs``, ``ys``; drawn ``radii`` pixels across, half) beside it, or as near
    as there is room, joined to it by a thin line: most crowded point first, each label goes to a spot
    of a grid around its point (:func:`_label_spot`) inside the axes and clear of the ``solid`` boxes
    (pixels, [N, 4] as x0, y0, x1, y1: the markers) and of the labels placed before, over as few of the
    ``thin`` boxes (error bars) and ``lines`` (pixels, [N, 2]: lines as points a few pixels apart; and
    the lines joining labels placed before) as there may be. A label with no such spot is left out:
    returns how many."""
    import numpy as np

    renderer = ax.figure.canvas.get_renderer()
    centres = ax.transData.transform(np.column_stack([xs, ys]).reshape(-1, 2))
    # A label may lie over an error bar or a line: a half-white ground keeps it legible, the line visible.
    ground = {"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0}
    texts = [ax.text(x, y, label, fontsize=LABEL_FONT, ha="left", va="bottom", bbox=ground)
             for x, y, label in zip(xs, ys, labels)]
    crowd = (np.linalg.norm(centres[:, None] - centres[None], axis=2) < CROWD * ax.figure.dpi / 72).sum(axis=1)
    solid, thin = np.asarray(solid, float).reshape(-1, 4), np.asarray(thin, float).reshape(-1, 4)
    lines = np.asarray(lines, float).reshape(-1, 2)
    left_out = 0
    for index in sorted(range(len(texts)), key=lambda i: (-crowd[i], i)):
        extent = texts[index].get_window_extent(renderer)
        box, leader = _label_spot(ax, centres[index], radii[index], (extent.width, extent.height),
                                  np.delete(centres, index, axis=0), solid, thin, lines)
        if box is None:
            texts[index].remove()
            left_out += 1
            continue
        texts[index].set_position(ax.transData.inverted().transform(box[:2]))
        # Labels side by side would read as one: a few pixels more between them across than up and down.
        solid = np.vstack([solid, box + [-LABEL_SPACE, -1, LABEL_SPACE, 1]])
        if leader is not None:
            ax.plot(*ax.transData.inverted().transform(leader).T, color="0.5", linewidth=0.5)
            lines = np.vstack([lines, np.linspace(*leader, LEADER_SAMPLES)])
    return left_out


def _label_spot(ax: Any, centre: Any, radius: float, size: tuple[float, float], others: Any, solid: Any, thin: Any,
                lines: Any) -> tuple[Any, Any]:
    """The box (pixels: x0, y0, x1, y1) of a label of ``size`` (pixels) for the point at ``centre``, and
    the line joining them ([2, 2] pixels; None when they touch); (None, None) where no spot of the grid
    is inside the axes and clear of the ``solid`` boxes (:func:`place_labels`). Of those, the spot
    taken is the first by: its line crosses fewest solid boxes; unless joined to its point by a line, it
    is nearer to its own point than to any of the ``others`` (pixels, [N, 2]), so that it is not read as
    another point's; it and its line cross (or run along) fewest ``thin`` boxes and ``lines`` points;
    it is nearest to the point."""
    import numpy as np

    (width, height), gap = size, radius + LABEL_PAD + 1
    offsets = gap + height * np.arange(LABEL_REACH)
    reach = np.hypot(offsets[-1] + width, offsets[-1] + height) + 1  # the farthest any spot (or line) gets
    solid, thin = (boxes[_box_distances(boxes, centre[None])[:, 0] < reach] for boxes in (solid, thin))
    lines, others = (near[np.linalg.norm(near - centre, axis=1) < reach] for near in (lines, others))
    # Vertically centred and right of the point first: of spots otherwise equal, the first is taken.
    lefts = np.concatenate([centre[0] + offsets, centre[0] - offsets - width, [centre[0] - width / 2]])
    bottoms = np.concatenate([[centre[1] - height / 2], centre[1] + offsets, centre[1] - offsets - height])
    x0, y0 = (grid.ravel() for grid in np.meshgrid(lefts, bottoms))
    spots = np.column_stack([x0, y0, x0 + width, y0 + height])
    padded = spots + [-LABEL_PAD, -LABEL_PAD, LABEL_PAD, LABEL_PAD]
    distance = _box_distances(spots, centre[None])[:, 0]
    frame = ax.bbox.extents
    blocked = ((spots[:, :2] < frame[:2] + 2).any(axis=1) | (spots[:, 2:] > frame[2:] - 2).any(axis=1)
               | (distance < gap) | _overlaps(padded, solid).any(axis=1))
    if blocked.all():
        return None, None
    nearest = np.column_stack([np.clip(centre[0], x0, x0 + width), np.clip(centre[1], y0, y0 + height)])
    ends = centre + (nearest - centre) * (gap / np.maximum(distance, gap))[:, None]  # the lines leave the marker
    crossing = _crossings(ends, nearest, solid).sum(axis=1)
    joined = distance > gap + 1  # drawn with a line to its point
    ambiguous = ~joined & (_box_distances(spots, others) < distance[:, None]).any(axis=1)
    clutter = (_overlaps(padded, thin).sum(axis=1) + _inside(padded, lines).sum(axis=1)
               + _crossings(ends, nearest, thin).sum(axis=1) + _along(ends, nearest, lines).sum(axis=1))
    best = int(np.lexsort((distance, clutter, ambiguous, crossing, blocked))[0])
    leader = np.array([ends[best], nearest[best]]) if joined[best] else None
    return spots[best], leader


def _box_distances(boxes: Any, points: Any) -> Any:
    """[M, N] the distance from ``points[n]`` (x, y) to the nearest point of ``boxes[m]`` (x0, y0, x1, y1)."""
    import numpy as np

    dx = np.maximum(np.maximum(boxes[:, None, 0] - points[None, :, 0], points[None, :, 0] - boxes[:, None, 2]), 0)
    dy = np.maximum(np.maximum(boxes[:, None, 1] - points[None, :, 1], points[None, :, 1] - boxes[:, None, 3]), 0)
    return np.hypot(dx, dy)


def _crossings(starts: Any, ends: Any, boxes: Any) -> Any:
    """[M, N] whether the segment from ``starts[m]`` to ``ends[m]`` (x, y) passes through the inside of
    ``boxes[n]`` (x0, y0, x1, y1): the slab test, each axis bounding the part of the segment within the box."""
    import numpy as np

    entry, leave = np.zeros((len(starts), len(boxes))), np.ones((len(starts), len(boxes)))
    for axis in (0, 1):
        start, step = starts[:, axis, None], (ends - starts)[:, axis, None]
        low, high = boxes[None, :, axis], boxes[None, :, axis + 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            first, second = (low - start) / step, (high - start) / step
        parallel = step == 0  # inside the slab throughout, or never
        within = (start > low) & (start < high)
        entry = np.maximum(entry, np.where(parallel, np.where(within, 0.0, np.inf), np.minimum(first, second)))
        leave = np.minimum(leave, np.where(parallel, np.where(within, 1.0, -np.inf), np.maximum(first, second)))
    return entry < leave


def _along(starts: Any, ends: Any, points: Any) -> Any:
    """[M, N] whether ``points[n]`` lies within ``LABEL_PAD`` (pixels) of the segment from ``starts[m]`` to
    ``ends[m]`` (x, y): a line joining a label that would run along (or across) another line."""
    import numpy as np

    step = (ends - starts)[:, None]
    length = np.maximum((step ** 2).sum(axis=2), 1e-12)
    share = np.clip(((points[None] - starts[:, None]) * step).sum(axis=2) / length, 0, 1)
    return np.linalg.norm(starts[:, None] + share[..., None] * step - points[None], axis=2) < LABEL_PAD


def _overlaps(a: Any, b: Any) -> Any:
    """[M, N] whether box ``a[m]`` and box ``b[n]`` overlap (x0, y0, x1, y1 each)."""
    return ((a[:, None, 0] < b[None, :, 2]) & (a[:, None, 2] > b[None, :, 0])
            & (a[:, None, 1] < b[None, :, 3]) & (a[:, None, 3] > b[None, :, 1]))


def _inside(boxes: Any, points: Any) -> Any:
    """[M, N] whether ``points[n]`` (x, y) lies inside ``boxes[m]`` (x0, y0, x1, y1)."""
    return ((points[None, :, 0] > boxes[:, None, 0]) & (points[None, :, 0] < boxes[:, None, 2])
            & (points[None, :, 1] > boxes[:, None, 1]) & (points[None, :, 1] < boxes[:, None, 3]))


def step_samples(ax: Any, xs: Sequence[float], ys: Sequence[float]) -> Any:
    """Points (pixels, [N, 2]) a few pixels apart along the steps drawn through data (``xs``, ``ys``)
    with ``where="post"``."""
    import numpy as np

    corners = []
    for k, (x, y) in enumerate(zip(xs, ys)):
        if k:
            corners.append((x, ys[k - 1]))
        corners.append((x, y))
    pixels = ax.transData.transform(np.array(corners, float).reshape(-1, 2))
    return np.concatenate([pixels[:1]] + [np.linspace(a, b, max(2, int(np.hypot(*(b - a)) / 4)))[1:]
                                          for a, b in zip(pixels, pixels[1:])])
