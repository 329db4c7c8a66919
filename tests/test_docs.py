"""The README stays short and its links land; the docs/ folder builds as a site with
`mkdocs build --strict`, which fails on a link to a missing page or anchor."""

import os
import re
import subprocess
import sys

from helpers import ROOT

README_MAX_LINES = 200
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(markdown):
    """The anchors GitHub and MkDocs give the headings of a Markdown text (outside
    fenced code): lower case, punctuation dropped, spaces as hyphens."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.*)", line)
        if heading and not fenced:
            text = heading.group(1).replace("`", "").lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def broken_links(path):
    """Relative links of the Markdown file at path whose file or anchor is missing."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(linked):
            broken.append(target)
        elif anchor:
            with open(linked, encoding="utf-8") as f:
                if anchor not in heading_anchors(f.read()):
                    broken.append(target)
    return broken


def test_the_readme_is_short():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_every_link_of_the_readme_lands(tmp_path):
    assert broken_links(os.path.join(ROOT, "README.md")) == []
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n[ok](#a-title) [gone](#nowhere) [file](missing.md)\n")
    assert broken_links(str(page)) == ["#nowhere", "missing.md"]


def test_the_docs_build_strictly(tmp_path):
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert (site / "index.html").exists() and (site / "flags" / "index.html").exists()
    # Every page of docs/ is in the site's navigation.
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        navigation = f.read()
    pages = sorted(p for p in os.listdir(os.path.join(ROOT, "docs")) if p.endswith(".md"))
    assert [p for p in pages if p not in navigation] == []
