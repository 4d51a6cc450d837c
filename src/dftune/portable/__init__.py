"""The one path a face takes from a file to the model, shared by dftune and the submission script.

``dftune export`` copies this package, byte for byte, as ``dftune_portable/`` beside
``predict_submission.py``, so a submission runs it without dftune installed; dftune itself
imports it for every step listed here. Its modules therefore import only the standard
library, numpy and Pillow at the top (and each other, relatively); torch, transformers,
PyAV, OpenCV, dlib and onnxruntime are imported where a step needs them, and nothing here
imports dftune (``tests/test_portable.py`` checks both).

Steps, in the order a file meets them:

- files: :func:`load_image` (EXIF orientation, alpha, palette, 16-bit, GIF first frame),
  :func:`sample_frames` (PyAV, the stream's display rotation applied, the guide's
  ``linspace`` sampling, frames nothing wanted references skipped; ``lazy``:
  :class:`LazyRGB` frames that convert to RGB only the regions used);
- faces: the detectors (dlib HOG as the guide runs it, RetinaFace, optionally with a
  cheaper first pass at a lower width), the guide's square
  (:func:`guide_square`) and the one face crop (:func:`crop_face`, PIL bicubic as the
  guide), and the policy for whole images (:func:`frame_image`);
- model input: :class:`Preprocess`, what the model's image processor does (resize rule,
  centre crop, rescale, normalise) as numbers, applied by :func:`resize_crop_uint8`
  (per image, uint8) and :func:`normalise` (per batch, on the device);
- scoring: :func:`parse_tta`/:func:`tta_views`, :func:`prob_fake` (softmax of the
  model's *fake* output, found by name with :func:`resolve_labels`);
- pooling: :func:`parse_aggregate`/:func:`pool`, a video's frames to one score.
"""

from __future__ import annotations

from .decision import (
    CROP_KEYS,
    DEFAULT_CROP,
    UNTUNED_ENSEMBLE,
    crop_settings,
    decide_threshold,
    describe_threshold,
    ensemble_members,
    mean_threshold,
    weighted_mean,
)
from .faces import (
    ALREADY_CROPPED,
    DETECTORS,
    FRAMED_AS_IS,
    FRAMED_CROPPED,
    FRAMED_FACE,
    FRAMED_NO_FACE,
    MARGIN,
    SIZE,
    DlibHOG,
    Face,
    FaceCrop,
    FileFrames,
    RetinaFace,
    crop_face,
    crop_square,
    frame_file,
    frame_image,
    get_detector,
    guide_square,
    is_face_crop,
    largest,
    whole_image_box,
)
from .files import (
    IMAGE_EXTS,
    NAME_STYLES,
    VIDEO_EXTS,
    CsvFormat,
    FileResult,
    InputFile,
    Inputs,
    collect,
    collect_inputs,
    kind_of,
    to_csv,
)
from .images import (
    VideoError,
    load_image,
)
from .labels import (
    FAKE_WORDS,
    REAL_WORDS,
    LabelMap,
    LabelMappingError,
    label_from_word,
    resolve_labels,
)
from .pooling import (
    AGGREGATES,
    format_aggregate,
    parse_aggregate,
    pool,
)
from .preprocess import (
    SUPPORTED,
    Preprocess,
    centre_crop,
    normalise,
    resize_crop_uint8,
    resize_hw,
    stack_inputs,
    value_table,
)
from .scoring import (
    BACKENDS,
    INT8_NAME,
    META_NAME,
    ONNX_NAME,
    fake_index_of,
    load_runner,
    parse_tta,
    prob_fake,
    quantize_int8,
    tta_views,
)
from .video import (
    DETECT_WIDTH,
    FRAMES,
    LazyRGB,
    apply_rotation,
    decode_frames,
    decode_frames_skipping,
    frame_count,
    sample_frames,
    sample_indices,
)

__all__ = [
    "CROP_KEYS",
    "crop_settings",
    "decide_threshold",
    "ensemble_members",
    "weighted_mean",
    "MARGIN",
    "SIZE",
    "FRAMES",
    "AGGREGATES",
    "ALREADY_CROPPED",
    "BACKENDS",
    "CsvFormat",
    "DEFAULT_CROP",
    "DETECTORS",
    "DETECT_WIDTH",
    "DlibHOG",
    "FAKE_WORDS",
    "FRAMED_AS_IS",
    "FRAMED_CROPPED",
    "FRAMED_FACE",
    "FRAMED_NO_FACE",
    "Face",
    "FaceCrop",
    "FileFrames",
    "FileResult",
    "IMAGE_EXTS",
    "INT8_NAME",
    "InputFile",
    "Inputs",
    "LabelMap",
    "LabelMappingError",
    "LazyRGB",
    "META_NAME",
    "NAME_STYLES",
    "ONNX_NAME",
    "Preprocess",
    "REAL_WORDS",
    "RetinaFace",
    "SUPPORTED",
    "UNTUNED_ENSEMBLE",
    "VIDEO_EXTS",
    "VideoError",
    "apply_rotation",
    "centre_crop",
    "collect",
    "collect_inputs",
    "crop_face",
    "crop_square",
    "decode_frames",
    "decode_frames_skipping",
    "describe_threshold",
    "fake_index_of",
    "format_aggregate",
    "frame_count",
    "frame_file",
    "frame_image",
    "get_detector",
    "guide_square",
    "is_face_crop",
    "kind_of",
    "label_from_word",
    "largest",
    "load_image",
    "load_runner",
    "mean_threshold",
    "normalise",
    "parse_aggregate",
    "parse_tta",
    "pool",
    "prob_fake",
    "quantize_int8",
    "resize_crop_uint8",
    "resize_hw",
    "resolve_labels",
    "sample_frames",
    "sample_indices",
    "stack_inputs",
    "to_csv",
    "tta_views",
    "value_table",
    "whole_image_box",
]
