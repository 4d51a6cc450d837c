"""prepare's fast path (issue 12): frames converted only where a crop needs them, RetinaFace's cheaper first
pass that falls back to the full width for small faces, decoding that stops short of unwanted frames, and
settings that keep earlier prepared folders resumable."""

from __future__ import annotations

import numpy as np
import pytest

from dftune import portable


def _video(path, frames, gop=8):
    """An H.264 file with an IDR frame every ``gop`` frames (so that decoding can stop between them)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.codec_context.gop_size = gop
        s.options = {"keyint": str(gop), "min-keyint": str(gop), "scenecut": "0", "bframes": "2"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _frames(n=40, w=320, h=240):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 3 * k, axis=1) for k in range(n)]


def _full_decode(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_lazy_frames_and_stopping_short_give_the_full_decodes_pixels(tmp_path):
    path = tmp_path / "v.mp4"
    _video(path, _frames())
    full = _full_decode(path)
    for lazy in (False, True):
        got = dict(portable.sample_frames(path, 4, lazy=lazy))  # frames 0, 13, 26, 39 of 40: gaps span IDRs
        assert sorted(got) == [0, 13, 26, 39]
        for i, f in got.items():
            if lazy:
                assert isinstance(f, portable.LazyRGB)
                for y0, y1, x0, x1 in ((0, 240, 0, 320), (17, 131, 45, 203), (201, 240, 280, 320)):
                    assert np.array_equal(f[y0:y1, x0:x1], full[i][y0:y1, x0:x1]), (i, y0, x0)  # a region alone
            assert np.array_equal(np.asarray(f), full[i]), i


def test_retinaface_first_pass_keeps_large_faces_and_looks_again_for_small_ones(face_photo):
    from PIL import Image

    from dftune.geometry import square_iou

    photo = Image.open(face_photo).convert("RGB")
    one = portable.get_detector("retinaface")
    two = portable.get_detector("retinaface", first_width=320, first_min_face=32)
    calls = []
    run = two._run
    two._run = lambda small, pad=False: calls.append(small.shape[1]) or run(small, pad)
    for side, passes in ((600, [320]), (150, [320, 640])):  # the face ~ half the photo: ~75 px and ~19 px at 320
        canvas = np.full((720, 1280, 3), 100, np.uint8)
        canvas[60:60 + side, 400:400 + side] = np.asarray(photo.resize((side, side)))
        calls.clear()
        a, b = one.detect(canvas), two.detect(canvas)
        assert calls == passes, (side, calls)
        assert a and b
        big_a = max(a, key=lambda f: (f.x2 - f.x1) * (f.y2 - f.y1))
        big_b = max(b, key=lambda f: (f.x2 - f.x1) * (f.y2 - f.y1))
        if passes == [320, 640]:  # the second pass is the single pass: the same boxes
            assert [(f.x1, f.y1, f.x2, f.y2) for f in a] == [(f.x1, f.y1, f.x2, f.y2) for f in b]
        else:
            ga = portable.guide_square(big_a.x1, big_a.y1, big_a.x2, big_a.y2, 1280, 720)
            gb = portable.guide_square(big_b.x1, big_b.y1, big_b.x2, big_b.y2, 1280, 720)
            assert square_iou(ga, gb) > 0.8


def test_detect_width_keeps_earlier_folders_resumable_and_names_the_flag(tmp_path):
    from dftune.atomic import write_json
    from dftune.sources import SourceError
    from dftune.stages.prepare import PrepareConfig, _check_settings

    dlib = PrepareConfig(root=tmp_path, out=tmp_path / "d", detector="dlib")
    assert "detect_width" not in dlib.crop_settings()  # dlib auto = the one width of earlier versions
    old_retina = PrepareConfig(root=tmp_path, out=tmp_path / "r", detector="retinaface", detect_width=640)
    assert "detect_width" not in old_retina.crop_settings()
    auto = PrepareConfig(root=tmp_path, out=tmp_path / "r", detector="retinaface")
    assert auto.detector_kwargs() == {"detect_width": 640, "first_width": 320, "first_min_face": 32}
    (tmp_path / "r").mkdir()
    write_json(tmp_path / "r" / "settings.json", old_retina.crop_settings())  # a folder from before the option
    _check_settings(old_retina)
    with pytest.raises(SourceError, match="--detect-width 640"):
        _check_settings(auto)
    with pytest.raises(SourceError, match="--detect-width"):
        PrepareConfig(root=tmp_path, out=tmp_path / "x", detector="retinaface", detect_width=8).detector_kwargs()
