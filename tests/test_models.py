from dftune.model.load import build_tiny_vit, load_classifier
from dftune.portable import Preprocess


def test_preprocess_reads_size_mean_std(tmp_path):
    build_tiny_vit(tmp_path / "m", image_size=48, patch_size=8)
    _, proc = load_classifier(str(tmp_path / "m"))
    pre = Preprocess.from_processor(proc)
    assert (pre.out_height, pre.out_width) == (48, 48)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)


def test_missing_model_folder_is_named(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="nope"):
        load_classifier(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_classifier(str(tmp_path / "empty"))
