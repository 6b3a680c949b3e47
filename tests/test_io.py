"""mmfast._io: atomic writes leave files with the user's umask, like a plain open()."""

import os
import stat
import subprocess
import sys

from mmfast._io import default_file_mode, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_uses_the_umask_like_open(tmp_path):
    before = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(before)
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.txt") == 0o640


def test_cli_files_get_group_read_with_umask_022(tmp_path):
    # the files a run writes are readable by others as with any other tool (not mkstemp's 0600)
    code = ("import os; os.umask(0o022); from mmfast._io import write_text_atomic, "
            f"default_file_mode; write_text_atomic({str(tmp_path / 'r.json')!r}, '{{}}'); "
            "print(oct(default_file_mode()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ}).stdout.strip()
    assert out == "0o644" and _mode(tmp_path / "r.json") == 0o644
    assert default_file_mode() == 0o666 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
