from dftune.model.load import build_tiny_vit, load_classifier, processor_stats


def test_processor_stats_reads_size_mean_std(tmp_path):
    build_tiny_vit(tmp_path / "m", image_size=48, patch_size=8)
    _, proc = load_classifier(str(tmp_path / "m"))
    st = processor_stats(proc)
    assert (st["height"], st["width"]) == (48, 48)
    assert st["mean"] == [0.5, 0.5, 0.5] and st["std"] == [0.5, 0.5, 0.5]


def test_missing_model_folder_is_named(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="nope"):
        load_classifier(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_classifier(str(tmp_path / "empty"))
