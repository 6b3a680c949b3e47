"""What the repository promises about installing: no package index host names, the extras
README names exist, the core imports with torch and numpy only, and no document refers to a
file the repository lacks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _tracked_files() -> list[Path]:
    proc = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    return [REPO / name for name in proc.stdout.splitlines() if (REPO / name).is_file()]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


#: host names of package indexes (assembled, so that this file does not name them itself)
INDEX_HOSTS = [".".join(parts) for parts in (
    ("pypi", "org"), ("pythonhosted", "org"), ("download", "pytorch", "org"),
    ("anaconda", "org"), ("pypi", "nvidia", "com"), ("conda", "anaconda", "org"))]


def test_no_package_index_host_in_the_repository():
    hits = [f"{path.relative_to(REPO)}: {host}" for path in _tracked_files()
            if (text := _text(path)) is not None for host in INDEX_HOSTS if host in text]
    assert not hits, hits
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "MMFAST_TORCH_INDEX" in setup and not re.search(r"https?://", setup)


def test_extras_are_declared_and_documented():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == ["numpy", "torch"]
    extras = project["optional-dependencies"]
    assert {"data", "report", "train", "all", "test"} <= set(extras)
    readme = (REPO / "README.md").read_text()
    for extra in ("data", "report", "all"):
        assert f"mmfast[{extra}]" in readme
    # every package the `mmfast` commands import is in some extra (the CLI names the extra)
    from mmfast.cli import DISTRIBUTIONS, EXTRAS

    for module, extra in EXTRAS.items():
        assert DISTRIBUTIONS.get(module, module) in extras[extra], (module, extra)


def test_core_needs_torch_and_numpy_only():
    """mmfast.ops and mmfast.nn import and run with every optional package blocked."""
    blocked = ["tqdm", "matplotlib", "PIL", "av", "scipy", "sklearn", "nvidia",
               "espeakng_loader", "triton", "pandas"]
    code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
            "import torch, mmfast, mmfast.ops, mmfast.nn\n"
            "x = torch.randn(4, 2, 3); mask = torch.ones(4, 2, dtype=torch.bool)\n"
            "y = mmfast.nn.MaskedFusion(num_modalities=2)(x, mask)\n"
            "assert y.shape == (4, 3)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{blocked!r} and sys.modules[m] is not None))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


#: names of files a document may mention that a run writes (not part of the repository)
GENERATED = {"report.md", "summary.md"}  # written by mmfast report / gpu_check.sh


def test_documents_refer_only_to_files_the_repository_has():
    files = _tracked_files()
    names = {p.name for p in files}
    rel = {p.relative_to(REPO).as_posix() for p in files}
    missing = []
    for doc in (p for p in files if p.suffix == ".md"):
        text = doc.read_text(encoding="utf-8")
        for link in re.findall(r"\]\(([^)#\s]+)", text):  # markdown links
            if "://" in link:
                continue
            target = (doc.parent / link).resolve()
            if not target.exists():
                missing.append(f"{doc.relative_to(REPO)} links {link}")
        for mention in set(re.findall(r"[\w./-]*\b[\w-]+\.md\b", text)):  # *.md mentions
            base = mention.rsplit("/", 1)[-1]
            if base in GENERATED:
                continue
            if "/" in mention:
                ok = mention in rel or (doc.parent / mention).resolve().exists()
            else:
                ok = base in names
            if not ok:
                missing.append(f"{doc.relative_to(REPO)} mentions {mention}")
    assert not missing, missing


def test_readme_benchmarks_section_shows_the_summarize_step():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    assert "benchmarks/summarize.py" in section and "--benchmark-json" in section
    assert "mmfast bench --full" in section


def test_deprecations_from_mmfast_code_fail_the_test_run():
    """pyproject's filterwarnings: a DeprecationWarning attributed to an mmfast module is an
    error in every test; torch's internal script_method one is not shown."""
    for category in (DeprecationWarning, PendingDeprecationWarning):
        with pytest.raises(category):
            warnings.warn_explicit("old API", category, "mmfast/x.py", 1, module="mmfast.x")
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn_explicit("`torch.jit.script_method` is deprecated. Please switch",
                               DeprecationWarning, "torch/utils/mkldnn.py", 19,
                               module="torch.utils.mkldnn")
    assert not seen
