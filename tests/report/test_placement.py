"""Markers set side by side so that none hides another: :func:`qnnrun.report.placement.dodge`, exactly.
(Label placement is tested through the plot that uses it, in test_plots.py.)"""

from __future__ import annotations

import pytest

from qnnrun.report.placement import dodge


def test_dodge_spreads_markers_that_would_overlap_and_leaves_the_others() -> None:
    xs = [10.0, 10.0, 10.0, 10.0, 50.0]
    lows, highs = [0.0, 1.0, 30.0, 2.0, 0.0], [5.0, 6.0, 35.0, 7.0, 5.0]  # 0, 1, 3 touch; 2 and 4 alone
    placed = dodge(xs, lows, highs, width=4.0)
    assert placed[2] == 10.0 and placed[4] == 50.0
    assert [placed[i] for i in (0, 1, 3)] == [6.0, 10.0, 14.0]  # centred on their x, in index order


def test_dodge_keeps_the_order_of_xs_and_merges_clusters_it_pushes_together() -> None:
    xs = [0.0, 1.0, 5.0, 6.0]  # two pairs; spread apart, the pairs would touch: one cluster of four
    placed = dodge(xs, [0.0] * 4, [1.0] * 4, width=3.0)
    assert placed == sorted(placed)
    assert all(b - a >= 3.0 - 1e-9 for a, b in zip(placed, placed[1:]))
    assert sum(placed) / 4 == pytest.approx(sum(xs) / 4)


def test_dodge_leaves_markers_apart_in_height_where_they_are() -> None:
    assert dodge([1.0, 1.0], [0.0, 10.0], [5.0, 15.0], width=4.0) == [1.0, 1.0]


def test_dodge_keeps_a_cluster_within_its_widest_and_its_bounds() -> None:
    placed = dodge([10.0] * 5, [0.0] * 5, [1.0] * 5, width=4.0, widest=8.0, bounds=(0.0, 100.0))
    assert placed == [6.0, 8.0, 10.0, 12.0, 14.0]  # closer than the width: 8 across at most
    placed = dodge([1.0] * 3, [0.0] * 3, [1.0] * 3, width=4.0, bounds=(0.0, 100.0))
    assert placed == [0.0, 4.0, 8.0]  # moved right to stay within the bounds
