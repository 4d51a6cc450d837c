import numpy as np
import pytest

from dftune.geometry import points_to_crop, square_iou
from dftune.portable import crop_square, guide_square, sample_indices, whole_image_box


@pytest.mark.parametrize(
    "box, frame, margin, expected",
    [
        # w=100, h=80 -> side int(130)=130, centre (150,140), top-left (85,75)
        ((100, 100, 200, 180), (640, 480), 1.3, (85, 75, 130)),
        # top-left clamped at 0; side kept
        ((0, 0, 50, 50), (640, 480), 1.3, (0, 0, 65)),
        # right/bottom: side clipped to the frame (72 = 640 - 568), then to the height
        ((600, 400, 640, 480), (640, 480), 1.3, (568, 388, 72)),
        # margin 1.0, height larger than width
        ((10, 10, 30, 60), (100, 100), 1.0, (0, 10, 50)),
    ],
)
def test_guide_square(box, frame, margin, expected):
    assert guide_square(*box, *frame, margin=margin) == expected


def test_guide_square_odd_case_by_hand():
    # centre x = (11 + 112) // 2 = 61; 61 - 65 = -4 -> clamped to 0; centre y = 40; 40 - 65 -> 0
    x, y, side = guide_square(11, 20, 112, 60, 640, 480, 1.3)
    assert (x, y, side) == (0, 0, 131)


def test_guide_square_stays_inside_frame():
    rng = np.random.default_rng(0)
    for _ in range(500):
        w, h = rng.integers(50, 800, 2)
        x1, y1 = rng.integers(0, w - 5), rng.integers(0, h - 5)
        x2, y2 = rng.integers(x1 + 1, w + 1), rng.integers(y1 + 1, h + 1)
        x, y, s = guide_square(int(x1), int(y1), int(x2), int(y2), int(w), int(h), 1.3)
        assert x >= 0 and y >= 0 and s >= 0
        assert x + s <= w and y + s <= h


def test_crop_square_resizes_bicubic_to_size():
    img = np.zeros((100, 120, 3), np.uint8)
    img[20:60, 30:70] = 255
    out = crop_square(img, (30, 20, 40), 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out.mean() > 250  # the crop is the white square
    with pytest.raises(ValueError):
        crop_square(img, (0, 0, 0), 224)


def test_square_iou_and_points():
    assert square_iou((0, 0, 10), (0, 0, 10)) == 1.0
    assert square_iou((0, 0, 10), (20, 20, 10)) == 0.0
    assert square_iou((0, 0, 10), (5, 0, 10)) == pytest.approx(50 / 150)
    assert points_to_crop([(10, 10), (30, 30)], (10, 10, 20), 40) == [[0.0, 0.0], [40.0, 40.0]]
    assert whole_image_box(200, 100) == (50, 0, 100)


def test_sample_indices_follow_the_guide():
    assert sample_indices(300, 10) == [0, 33, 66, 99, 132, 166, 199, 232, 265, 299]
    assert sample_indices(5, 10) == [0, 1, 2, 3, 4]
    assert sample_indices(10, 3, every=4) == [0, 4, 8]
    assert sample_indices(0, 10) == []


def test_skipping_decoder_gives_the_frames_a_full_decode_gives(ffpp_tree):
    import av

    from dftune.portable import decode_frames, sample_frames

    video = ffpp_tree / "original_sequences/youtube/c23/videos/001.mp4"
    with av.open(str(video)) as c:
        assert c.streams.video[0].frames == 12
    fast = dict(sample_frames(video, 5))
    full = dict(decode_frames(video, list(range(12)), threads=1))
    assert sorted(fast) == [0, 2, 5, 8, 11]
    for i, rgb in fast.items():
        assert np.array_equal(rgb, full[i])
