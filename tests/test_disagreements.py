"""The disagreement gallery's data (workbench.insight.disagreements, .pictures) and figures
(workbench.ui.plots.gallery), on logits written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError
from workbench.insight import disagreements as dis
from workbench.insight.pictures import pictures, to_uint8
from workbench.ui.plots import gallery
from workbench.ui.plots.style import PlotDataError


def _logits(predictions, confidence, k=3):
    """[M, k] logits whose argmax is ``predictions`` with a margin that grows with confidence."""
    out = np.zeros((len(predictions), k))
    for i, (p, c) in enumerate(zip(predictions, confidence, strict=True)):
        out[i, p] = c
    return out


LABELS = np.array([0, 1, 2, 0, 1, 2, 0])
#                        0  1  2  3  4  5  6
STUDENT = _logits([1, 1, 0, 0, 2, 0, 2], [2, 5, 4, 5, 6, 1, 3])
TEACHER = _logits([0, 0, 2, 1, 1, 1, 1], [5, 5, 5, 5, 5, 5, 5])
# student right at 1, 3; teacher right at 0, 2, 4
# teacher only: 0 (s conf 2), 2 (4), 4 (6)  -> 4, 2, 0
# student only: 1, 3 (teacher conf equal)   -> 1, 3 (stable)
# both wrong:   5 (s conf 1), 6 (3)         -> 6, 5


def test_groups_hold_each_case_most_confident_mistake_first():
    groups = dis.disagreement_groups(LABELS, STUDENT, TEACHER)
    assert list(groups) == [key for key, _ in dis.GROUPS]
    assert groups == {"teacher_only": [4, 2, 0], "student_only": [1, 3], "both_wrong": [6, 5]}
    assert sorted(sum(groups.values(), [])) == [0, 1, 2, 3, 4, 5, 6]  # none right by both


def test_softmax_matches_the_formula_and_survives_large_logits():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]])
    e = np.exp([1.0, 2.0, 3.0])
    assert np.allclose(dis.softmax(z)[0], e / e.sum())
    assert np.allclose(dis.softmax(z)[1], [0.5, 0.5, 0.0])


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same images"):
        dis.disagreement_groups(LABELS[:3], STUDENT, TEACHER)


def test_pages_filter_by_class_and_clamp():
    positions = list(range(7))
    first = dis.gallery_page(positions, LABELS, page=0, per_page=3)
    assert (first.positions, first.page, first.pages, first.total) == ([0, 1, 2], 0, 3, 7)
    last = dis.gallery_page(positions, LABELS, page=99, per_page=3)
    assert (last.positions, last.page) == ([6], 2)
    zeros = dis.gallery_page(positions, LABELS, class_filter=0, page=1, per_page=2)
    assert (zeros.positions, zeros.pages, zeros.total) == ([6], 2, 3)
    empty = dis.gallery_page([], LABELS, page=3)
    assert (empty.positions, empty.page, empty.pages, empty.total) == ([], 0, 1, 0)


def test_tiles_show_label_predictions_and_the_probabilities_of_the_top_classes():
    (tile,) = dis.tiles([5], LABELS, STUDENT, TEACHER, ["a", "b", "c"], top=1)
    assert (tile.label, tile.student_prediction, tile.teacher_prediction) == (2, 0, 1)
    assert tile.classes == [0, 1, 2]  # student's top, teacher's top, then the label
    s = dis.softmax(STUDENT)[5]
    assert tile.student_probs == pytest.approx([s[0], s[1], s[2]])
    assert sum(dis.tiles([0], LABELS, STUDENT, TEACHER, "abc", top=3)[0].teacher_probs) == (
        pytest.approx(1.0)
    )


def test_a_click_names_its_class():
    names = ["zero", "one", "two"]
    assert dis.clicked_class({"points": [{"customdata": 2, "x": "two"}]}, names) == 2
    assert dis.clicked_class({"points": [{"customdata": [1]}]}, names) == 1
    assert dis.clicked_class({"points": [{"x": "one"}]}, names) == 1
    assert dis.clicked_class({"points": []}, names) is None
    assert dis.clicked_class(None, names) is None
    assert dis.clicked_class({"points": [{"customdata": 9}]}, names) is None


def test_to_uint8_inverts_the_normalisation():
    pixels = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(1, 1, 2, 2)  # [1, 1, 2, 2] in [0, 1]
    mean, std = (0.3,), (0.2,)
    got = to_uint8((pixels - 0.3) / 0.2, mean, std)
    assert got.shape == (1, 2, 2, 3) and got.dtype == np.uint8
    assert got[0, :, :, 0].tolist() == [[0, 128], [255, 64]]
    assert (got[..., 0] == got[..., 2]).all()  # grey repeated to RGB
    rgb = to_uint8(torch.full((2, 3, 1, 1), 9.0), (0.5,) * 3, (0.1,) * 3)
    assert (rgb == 255).all()  # clipped, not wrapped
    with pytest.raises(ConfigError, match="mean and std"):
        to_uint8(pixels, (0.1, 0.2, 0.3), (0.2,))


def test_pictures_of_a_run_come_from_its_test_split():
    config = {"dataset": "digits"}
    got = pictures(config, np.array([0, 5]))
    assert got.shape == (2, 8, 8, 3) and got.dtype == np.uint8 and got.max() > 0
    with pytest.raises(ConfigError, match="outside the test split"):
        pictures(config, [10**6])


def test_the_gallery_figure_has_an_image_and_two_bar_sets_per_tile():
    tiles = dis.tiles([4, 2, 0], LABELS, STUDENT, TEACHER, ["a", "b", "c"])
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    fig = gallery.gallery_figure(images, tiles, ["a", "b", "c"], columns=2, student_name="kd")
    kinds = [t.type for t in fig.data]
    assert kinds.count("image") == 3 and kinds.count("bar") == 6
    titles = [a.text for a in fig.layout.annotations]
    assert "label c<br>kd: a · teacher: c" in titles  # tile of image 2
    with pytest.raises(PlotDataError):
        gallery.gallery_figure(images[:0], [], ["a"])


def test_per_class_bars_carry_their_class_for_the_click():
    fig = gallery.per_class_accuracy_bars(
        {"teacher": [1.0, 0.5, float("nan")], "kd": [0.5, 0.5, 0.0]}, ["a", "b", "c"]
    )
    assert [t.name for t in fig.data] == ["teacher", "kd"]
    assert list(fig.data[0].customdata) == [0, 1, 2]
    assert fig.data[0].y[2] is None  # a class without images draws no bar
    with pytest.raises(PlotDataError, match="2 accuracies for 3"):
        gallery.per_class_accuracy_bars({"kd": [1.0, 1.0]}, ["a", "b", "c"])
