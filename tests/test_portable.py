"""The one image path (dftune.portable): rotation after decoding, the guide's crop resize, the
frame recount, image formats, the already-cropped rule, and stale model metadata."""

from __future__ import annotations

import numpy as np
import pytest

from dftune import portable


def _face_frames(n=6, w=200, h=160):
    from PIL import Image
    from skimage import data

    face = np.asarray(Image.fromarray(data.astronaut()[30:250, 130:330]).resize((120, 132)))
    out = []
    for k in range(n):
        f = np.full((h, w, 3), 90, np.uint8)
        x = 20 + 4 * k
        f[14:146, x:x + 120] = face
        out.append(f)
    return out


def test_rotated_video_gives_the_faces_of_its_upright_twin(tmp_path):
    from dftune.synthetic import write_video

    frames = _face_frames()
    write_video(tmp_path / "upright.mp4", frames)
    write_video(tmp_path / "phone.mp4", frames, rotate=-90)  # a portrait phone clip's tag
    up = dict(portable.sample_frames(tmp_path / "upright.mp4", 3))
    rot = dict(portable.sample_frames(tmp_path / "phone.mp4", 3))
    assert sorted(up) == sorted(rot) == [0, 2, 5]
    det = portable.get_detector("dlib")
    for i in up:
        assert rot[i].shape == up[i].shape == frames[0].shape  # upright, not sideways
        assert np.abs(rot[i].astype(int) - up[i].astype(int)).mean() < 3  # same picture up to the codec
        a, b = portable.crop_face(up[i], det), portable.crop_face(rot[i], det)
        assert a is not None and b is not None, "the detector must find the face in the rotated video"
        from dftune.geometry import square_iou

        assert square_iou(a.box, b.box) > 0.6  # the same face (HOG's scale steps may differ with codec noise)
    sideways = np.ascontiguousarray(np.rot90(frames[0], 1))  # what decoding without the rotation gave
    assert portable.crop_face(sideways, det) is None


def test_crop_is_the_guides_pil_bicubic_resize():
    """OpenCV's INTER_CUBIC (the old resize) is 2.3-3.0 grey levels away from the guide's PIL bicubic
    on these faces (it does not antialias when shrinking); ours is the guide's."""
    from PIL import Image
    from skimage import data

    frame = data.astronaut()  # 512 x 512: faces larger than 224 px are shrunk
    for box in (portable.guide_square(150, 40, 330, 250, 512, 512, 1.3), (100, 0, 400), (0, 0, 512)):
        x, y, side = box
        guide = np.asarray(Image.fromarray(frame).crop((x, y, x + side, y + side)).resize((224, 224), Image.BICUBIC))
        ours = portable.crop_square(frame, box, 224)
        assert np.abs(ours.astype(float) - guide.astype(float)).mean() < 1.0, box
        assert np.array_equal(ours, guide)


def test_recount_keeps_only_the_new_grid(tmp_path, monkeypatch):
    from dftune.synthetic import write_video

    frames = [np.full((48, 64, 3), 10 * k, np.uint8) for k in range(20)]
    write_video(tmp_path / "v.mp4", frames)
    from dftune.portable import video

    real = video._packet_pts(tmp_path / "v.mp4")
    monkeypatch.setattr(video, "_packet_pts", lambda p: (40, None))  # the container claims 40 frames
    got = [i for i, _ in portable.sample_frames(tmp_path / "v.mp4", 10)]
    assert real[0] == 20
    assert got == portable.sample_indices(20, 10)  # exactly the grid of the 20 real frames, nothing else


def test_image_formats_gif_tiff_16bit(tmp_path):
    from PIL import Image

    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 50, dtype=np.uint8)[None, :]
    Image.fromarray(rgb).save(tmp_path / "a.gif")
    Image.fromarray(rgb).save(tmp_path / "a.tiff")
    g16 = (np.linspace(0, 65535, 50)[None, :] * np.ones((40, 1))).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    for name in ("a.gif", "a.tiff", "g16.png"):
        assert portable.kind_of(tmp_path / name) == "image"
        im = portable.load_image(tmp_path / name)
        assert im.shape == (40, 50, 3) and im.dtype == np.uint8, name
    g = portable.load_image(tmp_path / "g16.png")
    assert g[0, 0, 0] == 0 and g[0, -1, 0] == 255 and abs(int(g[0, 25, 0]) - 130) <= 3  # scaled, not clipped
    t = portable.load_image(tmp_path / "a.tiff")
    assert np.array_equal(t, rgb)


def test_an_image_that_already_is_a_face_crop_is_used_whole():
    from skimage import data

    det = portable.get_detector("dlib")
    photo = data.astronaut()
    crop, how = portable.frame_image(photo, det, 1.3, 64, still=True)
    assert how == portable.FRAMED_FACE  # a portrait photo: the face is cropped
    fc = portable.crop_face(photo, det, 1.3, 224)  # what prepare would have written
    again, how = portable.frame_image(fc.crop, det, 1.3, 224, still=True)
    assert how == portable.FRAMED_CROPPED and np.array_equal(again, fc.crop)  # not cropped a second time
    # its guide square would leave it: used whole (the default), or padded out to the square when asked
    _, how = portable.frame_image(fc.crop, det, 1.3, 224, still=True, clipped="pad")
    assert how == portable.FRAMED_PADDED
    _, how = portable.frame_image(np.full((90, 120, 3), 128, np.uint8), det, 1.3, 64, still=True)
    assert how == portable.FRAMED_NO_FACE


def test_stale_fake_index_is_an_error_naming_both():
    names = {0: "Realism", 1: "Deepfake"}
    assert portable.fake_index_of(names, {"fake_index": 1}) == 1
    with pytest.raises(portable.LabelMappingError, match="says output 0 .*'Realism'.*output 1 .*'Deepfake'"):
        portable.fake_index_of(names, {"fake_index": 0}, where="m")
    # names that say nothing: the saved index (a model trained with --fake-label) is used
    assert portable.fake_index_of({0: "LABEL_0", 1: "LABEL_1"}, {"fake_index": 0}) == 0
    assert portable.fake_index_of(names, {"fake_index": 0}, fake_label="Realism") == 0


def test_the_demo_data_is_the_same_for_the_same_seed(tmp_path):
    """Two builds of the demo's FF++-shaped tree in one process give byte-identical videos (the
    encoder read memory it had not written: without the fix 11-14 of 50 videos differed)."""
    import hashlib

    from dftune.synthetic import build_ffpp_tree

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*.mp4"))}

    build_ffpp_tree(tmp_path / "a", n_ids=6, frames=8, width=160, height=120)
    build_ffpp_tree(tmp_path / "b", n_ids=6, frames=8, width=160, height=120)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert len(a) == 30 and a == b


def test_the_portable_package_imports_only_the_standard_library_numpy_and_pillow(tmp_path):
    """Every module of dftune.portable, copied as the submission folder's dftune_portable/, imports at module
    level nothing but the standard library, numpy, Pillow and its own modules (and never dftune)."""
    import shutil
    import subprocess
    import sys
    from importlib import resources

    from dftune.stages.export import PORTABLE_NAME, portable_files

    pkg = resources.files("dftune") / "portable"
    (tmp_path / PORTABLE_NAME).mkdir()
    for name in portable_files():
        shutil.copy(pkg / name, tmp_path / PORTABLE_NAME / name)
    mods = [f"{PORTABLE_NAME}.{n[:-3]}" for n in portable_files() if n != "__init__.py"]
    code = f"""
import sys
allowed = set(sys.stdlib_module_names) | {{"numpy", "PIL", {PORTABLE_NAME!r}}}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in allowed:
            raise ImportError("module-level import of " + name)
        return None
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {str(tmp_path)!r})
import importlib
importlib.import_module({PORTABLE_NAME!r})
for m in {mods!r}:
    importlib.import_module(m)
print("imported", len({mods!r}))
"""
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == f"imported {len(mods)}"
    assert len(mods) >= 8  # images, video, faces, labels, preprocess, scoring, pooling, decision, files
