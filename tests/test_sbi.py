"""dftune.sbi: self-blended pseudo-fakes from one real crop."""

import numpy as np
import pytest

from dftune import sbi


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A real face crop at 64 px, made the way the demo data makes them."""
    from dftune.portable import crop_square, guide_square
    from dftune.synthetic import _background, identity, render_frame

    ph = identity(0)
    frame, (x1, y1, x2, y2) = render_frame(ph.rgb, ph.face, _background(0, 160, 120), 0.3, motion_seed=0)
    return crop_square(frame, guide_square(x1, y1, x2, y2, 160, 120, 1.3), 64)


FIVE = [[25.0, 25.5], [44.0, 25.5], [35.5, 37.5], [25.0, 42.0], [42.5, 42.0]]


def _sixty_eight(cx=32.0, cy=34.0, r=16.0):
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + 1.1 * r * np.sin(t)], 1).tolist()


@pytest.mark.parametrize("marks", [None, FIVE, "68"])
def test_changes_only_inside_the_mask(crop, marks):
    marks = _sixty_eight() if marks == "68" else marks
    for seed in range(20):
        out, alpha = sbi.self_blend(crop, marks, np.random.default_rng(seed))
        assert out.shape == crop.shape and out.dtype == np.uint8
        assert alpha.shape == crop.shape[:2] and alpha.dtype == np.float32
        assert 0.0 <= alpha.min() and alpha.max() <= 1.0
        outside = alpha <= 0
        assert outside.any(), "the mask must leave the crop's border alone"
        np.testing.assert_array_equal(out[outside], crop[outside])
        # and the face itself did change
        inside = alpha > 0.2
        assert inside.any()
        assert np.abs(out[inside].astype(int) - crop[inside].astype(int)).mean() > 1.0


def test_difference_stays_within_the_dilated_hard_mask(crop):
    """Whatever the deformation, no pixel changes far outside the face region."""
    import cv2

    hard = sbi.face_mask(crop.shape[:2], FIVE)
    grown = cv2.dilate(hard, np.ones((25, 25), np.uint8))  # elastic + dilation + blur reach, at 64 px
    for seed in range(30):
        out, _ = sbi.self_blend(crop, FIVE, np.random.default_rng(seed))
        changed = (out != crop).any(2)
        assert not (changed & (grown == 0)).any()


@pytest.mark.parametrize("marks", [None, FIVE])
def test_mask_is_smooth(crop, marks):
    for seed in range(40):
        _, alpha = sbi.self_blend(crop, marks, np.random.default_rng(seed))
        gy, gx = np.gradient(alpha)
        assert np.hypot(gx, gy).max() < 0.35, "a soft mask has no hard step"
        soft = ((alpha > 0.05) & (alpha < 0.95 * alpha.max())).mean()
        assert soft > 0.03, "the edge is a band, not a line"


def test_deterministic_under_a_seed(crop):
    a, ma = sbi.self_blend(crop, FIVE, np.random.default_rng(7))
    b, mb = sbi.self_blend(crop, FIVE, np.random.default_rng(7))
    c, _ = sbi.self_blend(crop, FIVE, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a, c)


def test_mask_follows_the_landmarks():
    shape = (64, 64)
    left = sbi.face_mask(shape, _sixty_eight(cx=20, cy=32, r=10))
    right = sbi.face_mask(shape, _sixty_eight(cx=44, cy=32, r=10))
    assert left[:, :32].sum() > 5 * left[:, 32:].sum()
    assert right[:, 32:].sum() > 5 * right[:, :32].sum()
    # five points: an ellipse around eyes and mouth, larger than their extent
    m5 = sbi.face_mask(shape, FIVE)
    ys, xs = np.nonzero(m5 > 0.5)
    assert xs.min() < 25 and xs.max() > 44 and ys.min() < 25.5 and ys.max() > 42
    # no landmarks: inside the central face box (1/1.3 of the crop)
    m0 = sbi.face_mask(shape, None)
    side = 64 / 1.3
    ys, xs = np.nonzero(m0 > 0.5)
    assert xs.min() >= 32 - side / 2 - 1 and xs.max() <= 32 + side / 2 + 1


def test_blend_ratio_sets_the_peak(crop):
    _, alpha = sbi.self_blend(crop, None, np.random.default_rng(0), blend_ratios=(0.5,))
    assert alpha.max() == pytest.approx(0.5, abs=1e-6)
    _, alpha = sbi.self_blend(crop, None, np.random.default_rng(0), blend_ratios=(1.0,))
    assert alpha.max() == pytest.approx(1.0, abs=1e-6)


def test_bad_landmarks_fall_back_to_the_box(crop):
    out, alpha = sbi.self_blend(crop, [[500, 500]] * 5, np.random.default_rng(0))
    assert (alpha > 0).any() and alpha[32, 32] > 0


def test_bad_input_is_a_clear_error(crop):
    with pytest.raises(ValueError, match="uint8"):
        sbi.self_blend(crop.astype(np.float32), None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown SBI setting"):
        sbi.self_blend(crop, None, np.random.default_rng(0), colour=3)
