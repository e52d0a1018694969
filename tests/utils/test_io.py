"""Where artefacts may be written: the checks asked before anything is written."""

import errno
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from utils import cli, io
from utils.signals import Aborted


def test_a_folder_that_refuses_a_file_is_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root os.access says yes to everything; the probe asks the file system itself."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert io.folder_problem(tmp_path / "new" / "deeper") == f"its parent '{tmp_path}' is not writable"
    assert io.folder_problem(tmp_path) == "it is not writable"


def test_the_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    assert io.folder_problem(tmp_path / "a" / "b") is None and io.folder_problem(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_proc_is_not_a_place_for_outputs() -> None:
    assert io.folder_problem("/proc/x") == "its parent '/proc' is not writable"
    assert io.file_problem("/proc/x.pt") == "its folder '/proc' is not writable"


def test_file_problem(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    assert io.file_problem(tmp_path / "folder") == "it is a folder"
    assert io.file_problem(Path(".")) == "it is not a file name"
    assert io.file_problem(tmp_path / "file" / "x.pt") == f"its folder '{tmp_path / 'file'}' exists and is not a folder"
    assert io.file_problem(tmp_path / "new" / "x.pt") is None


def test_a_generator_writes_only_into_new_empty_or_its_own_folders(tmp_path: Path) -> None:
    assert io.foreign_folder_problem(tmp_path / "new", ("gt_sets",)) is None
    assert io.foreign_folder_problem(tmp_path, ("gt_sets",)) is None  # empty
    (tmp_path / "notes.txt").write_text("someone's file")
    assert io.foreign_folder_problem(tmp_path, ("gt_sets",)) == "it is a non-empty folder that holds no dataset of this command"
    (tmp_path / "gt_sets").mkdir()
    assert io.foreign_folder_problem(tmp_path, ("gt_sets",)) is None


def test_a_folder_that_cannot_be_listed_is_a_problem_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Write and search permission without read (``chmod 300``) lets a file be made but not the folder be listed;
    simulated, since root lists any folder."""
    def unlistable(self: Path):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", unlistable)
    assert io.foreign_folder_problem(tmp_path, ("gt_sets",)) == "its files cannot be listed (Permission denied)"


def test_a_failed_atomic_write_names_its_target_and_leaves_no_temp(tmp_path: Path) -> None:
    def full_disk(stream) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left") as caught:
        io.atomic_write(tmp_path / "table.csv", full_disk)
    assert caught.value.filename == str(tmp_path / "table.csv") and caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("error", "code", "line"), [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.csv"), 2, "error: '/data/x.csv': No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/x"), 2, "error: '/data/x': Permission denied"),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), 141, None),
])
def test_main_guard_turns_the_users_file_system_errors_into_one_line(
    capsys: pytest.CaptureFixture, error: OSError, code: int, line: str | None,
) -> None:
    def body() -> None:
        raise error

    assert cli.main_guard(body) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1:] == ([line] if line else [])


def test_main_guard_keeps_the_traceback_of_other_os_errors() -> None:
    def body() -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")  # a bug, not the user's

    with pytest.raises(OSError, match="Bad file descriptor"):
        cli.main_guard(body)


def test_a_reader_closing_the_pipe_early_ends_the_command_quietly() -> None:
    code = ("import sys; from utils import cli\n"
            "def body():\n    for _ in range(100000): print('row ' * 20)\n"
            "sys.exit(cli.main_guard(body))")
    shell = f"{sys.executable} -c \"{code}\" | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().startswith("row") and result.stderr == ""
    assert result.returncode == 141


@pytest.mark.parametrize(("interrupt", "line"), [
    (Aborted, "aborted (second Ctrl-C); the last complete last.pt is kept"),
    (KeyboardInterrupt, "interrupted (Ctrl-C); finished work is kept, rerun the command to go on"),
], ids=["second Ctrl-C in training", "Ctrl-C before training"])
def test_main_guard_words_a_ctrl_c_by_when_it_came(capsys: pytest.CaptureFixture, interrupt: type, line: str) -> None:
    def body() -> None:
        raise interrupt

    assert cli.main_guard(body) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1:] == [line]


def test_a_preemption_signal_during_a_write_is_delivered_once_the_file_is_whole(tmp_path: Path) -> None:
    """submitit's requeue handler exits at once; in the middle of torch.save that failed the job instead."""
    def requeue(number, frame):
        raise SystemExit(144)

    def write(stream) -> None:
        stream.write(b"first half ")
        signal.raise_signal(signal.SIGUSR2)  # what Slurm sends a job it pre-empts
        stream.write(b"second half")

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises(SystemExit):
            io.atomic_write(tmp_path / "last.pt", write)
        assert signal.getsignal(signal.SIGUSR2) is requeue
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert (tmp_path / "last.pt").read_bytes() == b"first half second half"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
