"""The docs site builds without a warning, and it tells every setting.

`mkdocs build --strict` (never with -q: quiet drops the warnings it counts) turns mkdocs' warnings into a failure: a link to a page or an anchor that
does not exist, a page under docs/ left out of the nav (`validation.omitted_files` in mkdocs.yml).
"""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_build_strictly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "runtime" / "index.html").exists()


def test_every_setting_is_documented():
    source = (ROOT / "tuner" / "settings.py").read_text()
    read = set(re.findall(r'"(TUNER_[A-Z0-9_]+)"', source))
    documented = set(re.findall(r"`(TUNER_[A-Z0-9_]+)`", (ROOT / "docs" / "settings.md").read_text()))
    assert read, "no setting found in tuner/settings.py"
    assert read <= documented, f"settings missing from docs/settings.md: {sorted(read - documented)}"


def test_the_readme_stays_a_newcomers_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"
    for link in re.findall(r"\]\((docs/[^)#]+)", "\n".join(lines)):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"
