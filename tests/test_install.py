"""Installing the suite adds one import name, retrain_suite, and never another
distribution's: PyPI's `bottleneck` (the NumPy accelerator pandas uses) and ours
can share an environment."""

import base64
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata

from helpers import ROOT

FAKE_BOTTLENECK = "FAKE_PYPI_BOTTLENECK = True\n"


def installed_distribution():
    """The retrain-suite distribution in site-packages (not the checkout's egg-info)."""
    sites = [p for p in sys.path if os.path.basename(p) == "site-packages"]
    found = [d for d in metadata.distributions(path=sites) if d.metadata["Name"] == "retrain-suite"]
    assert found, f"retrain-suite is not installed in {sites}: run pip install -e ."
    return found[0]


def test_the_installed_distribution_adds_only_the_retrain_suite_import_name():
    distribution = installed_distribution()
    assert distribution.read_text("top_level.txt").split() == ["retrain_suite"]
    top_level = set()
    for entry in distribution.files:
        first = str(entry).split("/")[0]
        if first.startswith(("..", "__pycache__", "retrain_suite")):
            continue  # scripts in bin/, bytecode, and our own package and metadata
        if first.startswith("__editable__"):
            # An editable install maps import names to the checkout: only ours.
            source = entry.locate().read_text() if str(entry).endswith("_finder.py") else ""
            mapping = re.search(r"MAPPING[^=]*=\s*(\{[^}]*\})", source)
            if mapping:
                assert list(eval(mapping.group(1))) == ["retrain_suite"]  # noqa: S307
            continue
        top_level.add(first)
    assert not top_level, f"installed outside retrain_suite: {sorted(top_level)}"


def fake_bottleneck_wheel(folder):
    """A wheel of a distribution named bottleneck owning the import name bottleneck."""
    files = {
        "bottleneck/__init__.py": FAKE_BOTTLENECK,
        "bottleneck-9.9.dist-info/METADATA": "Metadata-Version: 2.1\nName: bottleneck\nVersion: 9.9\n",
        "bottleneck-9.9.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                          "Tag: py3-none-any\n",
        "bottleneck-9.9.dist-info/top_level.txt": "bottleneck\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append("bottleneck-9.9.dist-info/RECORD,,")
    path = os.path.join(folder, "bottleneck-9.9-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr("bottleneck-9.9.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_the_suite_works_beside_a_distribution_that_owns_bottleneck(tmp_path):
    wheel = fake_bottleneck_wheel(str(tmp_path))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
         "--target", str(target), wheel],
        check=True, capture_output=True, timeout=120,
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    # Outside the checkout, `import bottleneck` is theirs, and ours still imports.
    code = (
        "import bottleneck, retrain_suite.bottleneck.cache, retrain_suite.job\n"
        "print(bottleneck.FAKE_PYPI_BOTTLENECK)\n"
    )
    process = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                             capture_output=True, text=True, timeout=120)
    assert process.stdout.strip() == "True", process.stderr[-2000:]
    assert (target / "bottleneck" / "__init__.py").read_text() == FAKE_BOTTLENECK
    # The library never imports the top-level name: retrain.py runs with theirs first
    # on the path, and `python -m bottleneck` in the checkout is still ours.
    for args in (["retrain.py", "--helpfull"], ["-m", "bottleneck", "--helpfull"]):
        process = subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert "--bottleneck_dir" in process.stdout, (args, process.stderr[-2000:])
