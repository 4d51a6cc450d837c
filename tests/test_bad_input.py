"""Nothing silent, nothing lost: shareable file modes, clear write errors, one writer per prepared
folder, honest --help, clear argument errors, and predict's row-per-input promise."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from dftune import atomic
from dftune.cli import build_parser


def test_written_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "a.txt", "x")
        atomic.write_json(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    for f in ("a.txt", "b.json"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == atomic.FILE_MODE, f
    assert atomic.FILE_MODE == 0o666 & ~atomic.UMASK


@pytest.mark.skipif(os.geteuid() == 0 and not os.path.exists("/proc/self"), reason="needs /proc")
def test_a_failed_write_names_the_file_and_the_free_space_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out" / "manifest.csv"
    atomic.write_text(target, "old")
    with pytest.raises(atomic.WriteError, match=r"manifest\.csv: cannot write \(No space left on device\); "
                                                r"[0-9.]+ GB free on"):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("new")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["manifest.csv"]  # no temporary file left


def test_a_second_writer_of_a_folder_is_told_who_holds_it(tmp_path):
    code = ("import sys, time; from dftune.atomic import folder_lock\n"
            "with folder_lock(sys.argv[1], 'lock', 'dftune prepare'):\n"
            "    print('held', flush=True); time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(atomic.FolderBusy, match=r"dftune prepare \(pid \d+\) is writing this folder"):
            with atomic.folder_lock(tmp_path, "lock"):
                pass
    finally:
        p.kill()
        p.wait()
    with atomic.folder_lock(tmp_path, "lock"):  # released with its process
        pass


def test_help_states_each_default_once_and_not_for_switches(capsys):
    parser = build_parser()
    for cmd in ("prepare", "train", "evaluate", "predict", "export", "demo", "synth"):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        text = capsys.readouterr().out
        for line in text.splitlines():
            assert line.count("(default") <= 1, (cmd, line)
        assert "(default: True)" not in text and "(default: False)" not in text, cmd
        assert "best_model" not in text, cmd


def test_bad_shard_says_what_is_expected(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "x", "--out", "y", "--shard", "abc"])
    assert "expected K/N with 1 <= K <= N, such as 1/4; got 'abc'" in capsys.readouterr().err


def test_inputs_keep_same_names_apart_and_count_what_they_skip(tmp_path):
    from PIL import Image

    from dftune.portable import collect

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / d / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "c.txt").write_text("named on the command line")
    found = collect([tmp_path / "a", tmp_path / "b", tmp_path / "c.txt"])
    names = [f.name for f in found.files]
    assert names == ["a/x.png", "b/x.png", "c.txt"]  # two x.png kept apart; the named .txt gets a row
    assert found.skipped == [str(tmp_path / "a" / "notes.txt")]
    files = collect([tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]).files
    assert len({f.name for f in files}) == 2
