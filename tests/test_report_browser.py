"""The report page in a real browser (headless Chromium, Debian's `chromium`): it opens
from disk with nothing refused or logged, every picture decodes, hostile names are text,
the screenshot is not blank, and its Content-Security-Policy stops a script that would
have slipped past the escaping.

Chromium runs the page as a user's browser would; only a copy of the page gets the
small checking script below, allowed by its hash in that copy's policy (the page itself
allows no script at all).
"""

import base64
import hashlib
import html
import json
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from test_report_page import HOSTILE_FILE, SCRIPT_LABEL, SECRET_PATH, hostile_content

from retrain_suite import report_page

# Runs once the page and its pictures have loaded; leaves what it found in <pre id="check">.
CHECK_SCRIPT = """addEventListener("load", () => {
  const images = [...document.images];
  const found = {
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    not_data: images.filter(i => !i.src.startsWith("data:image/")).length,
    scripts: document.scripts.length,
    handlers: [...document.querySelectorAll("*")].filter(
        e => [...e.attributes].some(a => a.name.startsWith("on"))).length,
    text: document.body.innerText,
  };
  const out = document.createElement("pre");
  out.id = "check";
  out.textContent = JSON.stringify(found);
  document.body.append(out);
});"""


def chromium_path():
    """Chromium's path; a missing browser fails the test that needs it (it is never skipped)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is missing: apt-get install chromium (the report page's tests "
                    "open it in headless Chromium)", pytrace=False)
    return path


def run_chromium(tmp_path, page, *args):
    """Chromium, headless, on the file `page`. -> CompletedProcess (text)."""
    return subprocess.run(
        [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)


def console_lines(process):
    """The page's console messages (a refused load, a script error) as Chromium logs them."""
    return [line for line in process.stderr.splitlines() if ":CONSOLE" in line]


def checked(tmp_path, page):
    """What CHECK_SCRIPT found on a copy of page (a Path). -> dict."""
    digest = base64.b64encode(hashlib.sha256(CHECK_SCRIPT.encode()).digest()).decode()
    source = page.read_text(encoding="utf-8")
    policy = report_page.CONTENT_SECURITY_POLICY
    assert source.count(policy) == 1
    source = source.replace(policy, f"{policy}; script-src 'sha256-{digest}'")
    copy = tmp_path / "checked.html"
    copy.write_text(source.replace("</body>", f"<script>{CHECK_SCRIPT}</script></body>"),
                    encoding="utf-8")
    process = run_chromium(tmp_path, copy, "--dump-dom")
    assert process.returncode == 0, process.stderr[-2000:]
    assert not console_lines(process), console_lines(process)
    found = re.search(r'<pre id="check">(.*?)</pre>', process.stdout, re.S)
    assert found, process.stdout[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.fixture(scope="module")
def hostile_page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "report"
    report_page.write_report(str(folder), hostile_content())
    return folder / "report.html"


def test_every_picture_decodes_and_hostile_names_are_text(hostile_page, tmp_path):
    found = checked(tmp_path, hostile_page)
    assert found["broken"] == []
    assert found["images"] == 4 + len(hostile_content().thumbnails)  # curves, matrices, mistakes
    assert found["not_data"] == 0
    assert (found["scripts"], found["handlers"]) == (1, 0)  # the checking script only
    for name in (SCRIPT_LABEL, HOSTILE_FILE, SECRET_PATH, "caf\\udce9"):
        assert name in found["text"]


def test_page_opens_with_no_console_message_and_a_screenshot_that_is_not_blank(
        hostile_page, tmp_path):
    shot = tmp_path / "shot.png"
    process = run_chromium(tmp_path, hostile_page, f"--screenshot={shot}",
                           "--window-size=1200,2400", "--hide-scrollbars")
    assert process.returncode == 0 and shot.exists(), process.stderr[-2000:]
    assert not console_lines(process), console_lines(process)
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.int64)
    assert pixels.shape[:2] == (2400, 1200)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, tables, curves, heat maps: not one colour
    assert (pixels.sum(axis=2) < 600).mean() > 0.01  # some of it is not white


def test_policy_stops_a_script_and_a_remote_picture_that_slipped_past_escaping(
        hostile_page, tmp_path):
    source = hostile_page.read_text(encoding="utf-8")
    slipped = ('<script>document.title = "ran";</script>'
               '<img src="https://example.invalid/x.png" onerror="document.title = \'ran\'">')
    evil = tmp_path / "evil.html"
    evil.write_text(source.replace("</body>", slipped + "</body>"), encoding="utf-8")
    process = run_chromium(tmp_path, evil, "--dump-dom")
    assert process.returncode == 0, process.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", process.stdout, re.S).group(1)
    assert "ran" not in title and title.startswith("Retraining report")
    refused = "\n".join(console_lines(process))
    assert "Content Security Policy" in refused and "example.invalid" in refused


def test_a_command_line_runs_report_renders_whole(trained, tmp_path):
    found = checked(tmp_path, pathlib.Path(trained["settings"]["report_dir"], "report.html"))
    thumbnails = pathlib.Path(trained["settings"]["report_dir"], "report.html").read_text(
        encoding="utf-8").count('<figure class="thumb">')
    assert found["broken"] == [] and found["not_data"] == 0
    assert found["images"] == 3 + thumbnails  # curves, two matrices, any test mistakes
    assert "Exported files" in found["text"] and "Time by phase" in found["text"]
