"""Atomic writes under unguessable names: a planted link cannot redirect them, a failure leaves no debris."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuner import atomic
from tuner.owner import start_ticks


def test_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    atomic.write_text(target, "new")
    target.chmod(0o640)
    atomic.write_text(target, "newer")
    # The target holds the new text with the mode it had (mkstemp's 0600 does not leak), and nothing else is
    # left in the folder.
    assert target.read_text() == "newer" and os.stat(target).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_planted_links_at_old_predictable_names_are_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "out.json"
    # The names the tool once used for its temporary files, planted as links to another file.
    for name in (f"out.json.tmp-{os.getpid()}", f".out.json.tmp-{os.getpid()}"):
        (tmp_path / name).symlink_to(victim)
    atomic.write_text(target, "data")
    # The other file is untouched; the data went to the target.
    assert victim.read_text() == "precious" and target.read_text() == "data"


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        atomic.write_text(target, "new")
    # A full disk leaves the old file whole and no temporary behind.
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


@pytest.mark.parametrize("kind", ["fifo", "link", "folder"])
def test_a_target_that_is_no_regular_file_is_refused_and_left_as_it_is(tmp_path: Path, kind: str) -> None:
    target, other = tmp_path / "out.html", tmp_path / "elsewhere"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "link":
        other.write_text("kept")
        target.symlink_to(other)
    else:
        target.mkdir()
    # A rename over a device (/dev/full, as root), a FIFO, a link or a folder would replace it with a file:
    # refused, both up front (check_writable) and when writing, and the thing there is untouched.
    for attempt in (lambda: atomic.check_writable(target), lambda: atomic.write_text(target, "new")):
        with pytest.raises(OSError, match="not a regular file"):
            attempt()
    assert target.is_symlink() if kind == "link" else (target.is_fifo() if kind == "fifo" else target.is_dir())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.html", *(["elsewhere"] if kind == "link" else [])]
    )


def test_check_writable_names_a_missing_folder_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic.check_writable(tmp_path / "no" / "such" / "x.md")
    # A writable folder passes, and the test file made there is gone.
    atomic.check_writable(tmp_path / "x.md")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    host = atomic._host()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited: no process has this pid now (it would take ~4 million forks)
    live = subprocess.Popen(["sleep", "30"])
    try:
        live_start = start_ticks(live.pid)
        stale = tmp_path / f".report.html.tmp-{host}-{dead_pid}-12345-abc123"
        running = tmp_path / f".report.html.tmp-{host}-{live.pid}-{live_start}-def456"
        elsewhere = tmp_path / f".report.html.tmp-0000beef-{dead_pid}-12345-ghi789"  # another host or container
        other = tmp_path / f".other.html.tmp-{host}-{dead_pid}-12345-jkl012"  # another target's
        for path in (stale, running, elsewhere, other):
            path.write_text("half a file")
        atomic.write_text(target, "whole")
        # Only the dead writer's file of this target on this host goes; a live writer's (it is about to rename
        # it), another machine's (its pids mean nothing here) and another target's stay.
        assert not stale.exists()
        assert running.exists() and elsewhere.exists() and other.exists()
        assert target.read_text() == "whole"
    finally:
        live.kill()
        live.wait()


def test_check_writable_refuses_a_name_the_temporary_file_could_not_have(tmp_path: Path) -> None:
    target = tmp_path / ("r" * 230 + ".html")  # a legal name, but its temporary file's would pass 255 bytes
    # check_writable makes its test file under the name write_text will use, so it refuses now, not after
    # an hour's run has been done.
    with pytest.raises(OSError):
        atomic.check_writable(target)
