"""A fresh clone stays clean after ``tools/setup.sh``: no build output is tracked, and everything the setup and an
editable install write in the checkout (.venv, mmx.egg-info, build/, __pycache__) is ignored by git. Reads git only;
nothing is installed."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_OUTPUT = re.compile(r"(^|/)(__pycache__|[^/]*\.egg-info|build|dist|\.venv|\.pytest_cache|mmx_demo)(/|$)"
                          r"|\.py[cod]$|(^|/)events\.out\.tfevents|(^|/)__editable__")
# What tools/setup.sh (venv + stamp) and `pip install -e .` (egg-info, build dir) write, and what tests/runs leave.
SETUP_OUTPUTS = (".venv/.mmx-installed", ".venv/bin/python", "mmx.egg-info/PKG-INFO", "mmx.egg-info/SOURCES.txt",
                 "build/lib/mmx/__init__.py", "dist/mmx-0.1.tar.gz", "mmx/__pycache__/cli.cpython-311.pyc",
                 "tests/train/__pycache__/x.pyc", ".pytest_cache/v/cache/lastfailed", "mmx_demo/hf/config.json")


def git(*args, check=True):
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=check).stdout


def test_no_build_output_is_tracked():
    tracked = [path for path in git("ls-files", "-z").split("\0") if path]
    assert len(tracked) > 100 and "setup.py" in tracked
    built = [path for path in tracked if BUILD_OUTPUT.search(path)]
    assert not built, f"build output tracked in git (git rm -r --cached them; .gitignore covers them): {built[:10]}"


def test_setup_and_editable_install_outputs_are_ignored():
    # check-ignore reports a tracked path as not ignored, so a tracked egg-info fails here too
    ignored = set(git("check-ignore", *SETUP_OUTPUTS, check=False).split())
    assert ignored == set(SETUP_OUTPUTS), f"not ignored by git: {sorted(set(SETUP_OUTPUTS) - ignored)}"
    # the outputs this checkout's own setup wrote: nothing of them shows in git status (untracked or modified)
    present = [path for path in (".venv", "mmx.egg-info", "build", "dist") if os.path.exists(os.path.join(ROOT, path))]
    assert ".venv" in present, "tools/setup.sh makes .venv; the tests run from it"
    status = git("status", "--porcelain", "--untracked-files=all", "--", *present)
    assert status == "", f"setup output shows in git status: {status.splitlines()[:5]}"
