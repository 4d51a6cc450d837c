"""``export --push-to-hub REPO``: the finished folder (with its model card) goes to the Hub through huggingface_hub;
only the two network calls (create_repo, upload_folder) are stood in for; offline it is refused before any write."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from dftune.cli import main
from dftune.model.load import build_tiny_vit


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(build_tiny_vit(tmp_path_factory.mktemp("hubmodel") / "m", {0: "Realism", 1: "Deepfake"},
                              image_size=32, seed=3))


def _args(model, out, *more):
    return ["export", "--model", model, "--out", str(out), "--bench-seconds", "0", "--n-samples", "2", *more]


class FakeHub:
    """Stands in for the Hub's two endpoints: what create_repo asked, and a copy of each uploaded folder."""

    def __init__(self, tmp: Path, fail: bool = False):
        self.tmp, self.fail, self.created, self.uploads = tmp, fail, [], []

    def install(self, monkeypatch):
        from huggingface_hub import HfApi, constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        hub = self

        def create_repo(api, repo_id, **kw):
            hub.created.append((repo_id, kw, api.token))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, *, repo_id, folder_path, **kw):
            if hub.fail:
                raise ConnectionError("Max retries exceeded with url: /api/models (network unreachable)")
            dest = hub.tmp / "remote" / repo_id
            shutil.copytree(folder_path, dest)
            hub.uploads.append((repo_id, dest, kw))

            class Info:
                commit_url = f"https://huggingface.co/{repo_id}/commit/abc123"
            return Info()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        return self


def test_push_uploads_the_verified_folder_with_its_model_card(model, tmp_path, monkeypatch, capsys):
    hub = FakeHub(tmp_path).install(monkeypatch)
    out = tmp_path / "submit"
    assert main(_args(model, out, "--push-to-hub", "me/deepfake-detector", "--private")) == 0
    assert hub.created == [("me/deepfake-detector", {"repo_type": "model", "private": True, "exist_ok": True},
                            "hf_test_token")]
    [(repo, remote, kw)] = hub.uploads
    assert repo == "me/deepfake-detector" and kw["repo_type"] == "model"
    # the Hub holds what the export wrote and verified, file for file
    local = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert local == sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file())
    for f in ("config.json", "model.safetensors", "dftune.json", "predict_submission.py", "export_report.json"):
        assert (remote / f).read_bytes() == (out / f).read_bytes()
    card = (remote / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert "threshold" in card and "predict_submission.py" in card  # this model, over the submission README
    said = capsys.readouterr()
    assert "me/deepfake-detector/commit/abc123" in said.out + said.err  # (the table's stream is item 2's to settle)


def test_offline_push_is_refused_in_one_line_and_writes_nothing(model, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "submit"
    assert main(_args(model, out, "--push-to-hub", "me/deepfake-detector")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and "nothing was written" in err[0]
    assert not out.exists()


def test_no_token_is_refused_before_writing(model, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login either
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    out = tmp_path / "submit"
    assert main(_args(model, out, "--push-to-hub", "me/deepfake-detector")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Hugging Face token" in err[0]
    assert not out.exists()


def test_a_failed_upload_says_so_in_one_line_and_keeps_the_folder_whole(model, tmp_path, monkeypatch, capsys):
    FakeHub(tmp_path, fail=True).install(monkeypatch)
    out = tmp_path / "submit"
    assert main(_args(model, out, "--push-to-hub", "me/deepfake-detector")) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and "upload failed" in err[0] and "network unreachable" in err[0]
    assert (out / "export_report.json").is_file() and (out / "model.safetensors").is_file()
