"""Frame numbers are a sequential decode's (issue 18, item 5): a trimmed mp4 (an edit list: packets the demuxer
marks discard, decoded as references and never shown) and H.264 with B-frames in AVI (pts that count packets in
decode order). Before the fix, the trimmed file was numbered over all packets (every=1 off by the trim, a grid
of 25 frames mixing two numberings) and the AVI's frames were ranked in decode order."""

from __future__ import annotations

import av
import numpy as np
import pytest

from conftest import encode_h264, trim_mp4
from dftune import portable
from dftune.portable import video

N, TRIM = 30, 5


def _frames(n: int, w: int = 96, h: int = 64):
    for i in range(n):  # each frame its own picture: a bright block that walks, a brightness that climbs
        a = np.full((h, w, 3), 20 + 7 * i, np.uint8)
        x = (i * 3) % (w - 16)
        a[8:40, x:x + 16] = 250
        yield i, a


def _sequential(path) -> list[np.ndarray]:
    c = av.open(str(path))
    try:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    finally:
        c.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("numbers")
    frames = [a for _, a in _frames(N)]
    return {"trimmed": trim_mp4(encode_h264(d / "src.mp4", frames), d / "trimmed.mp4", TRIM),
            "avi": encode_h264(d / "bframes.avi", frames, fmt="avi")}


def test_the_media_are_what_they_claim(media):
    c = av.open(str(media["trimmed"]))
    flags = [p.is_discard for p in c.demux(c.streams.video[0]) if p.size]
    c.close()
    assert sum(flags) == TRIM and len(_sequential(media["trimmed"])) == N - TRIM
    c = av.open(str(media["avi"]))
    st = c.streams.video[0]
    pts = [p.pts for p in c.demux(st) if p.size]
    c.close()
    assert st.codec_context.has_b_frames and pts == sorted(pts)  # B-frames, pts rising in decode order


@pytest.mark.parametrize("kind", ["trimmed", "avi"])
@pytest.mark.parametrize("how", [{"every": 1}, {"frames": 10}, {"frames": 25}, {"every": 4}])
def test_sampled_frames_are_the_sequential_decodes(media, kind, how):
    ref = _sequential(media[kind])
    got = list(portable.sample_frames(media[kind], **how))
    want = portable.sample_indices(len(ref), how.get("frames", portable.FRAMES), how.get("every", 0))
    assert [i for i, _ in got] == want
    for i, frame in got:
        assert np.array_equal(np.asarray(frame), ref[i]), f"frame {i} is another picture"


def test_lazy_frames_and_the_count_agree(media):
    assert portable.frame_count(media["trimmed"]) == N - TRIM
    assert portable.frame_count(media["avi"]) == N
    ref = _sequential(media["trimmed"])
    for i, frame in portable.sample_frames(media["trimmed"], frames=7, lazy=True):
        assert np.array_equal(np.asarray(frame[8:40, :]), ref[i][8:40, :])


def test_the_avi_is_decoded_in_order_not_by_pts(media):
    """The pts of an AVI with B-frames cannot number its frames: the sampler decodes it sequentially."""
    declared, pts = video._packet_pts(media["avi"])
    assert declared == N and pts is None
