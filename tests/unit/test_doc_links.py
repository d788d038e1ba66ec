"""Every relative link (and #anchor) in README.md, docs/*.md and the kits' READMEs resolves."""

from __future__ import annotations

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = re.sub(r"[`*~]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", h).replace(" ", "-")


def _anchors(path: str) -> set[str]:
    out: set[str] = set()
    seen: dict[str, int] = {}
    fence = False
    with open(path) as f:
        for line in f:
            if line.startswith("```"):
                fence = not fence
            m = None if fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                s = _slug(m.group(1))
                n = seen.get(s, 0)
                seen[s] = n + 1
                out.add(s if n == 0 else f"{s}-{n}")
    return out


def _docs() -> list[str]:
    return [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))),
            *sorted(glob.glob(os.path.join(REPO, "integrations", "*", "README.md")))]


def test_every_relative_link_and_anchor_resolves():
    dead = []
    for doc in _docs():
        with open(doc) as f:
            text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
        for target in re.findall(r"\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)", text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
            if not os.path.exists(dest):
                dead.append(f"{os.path.relpath(doc, REPO)}: {target} (no such file)")
            elif anchor and dest.endswith(".md") and anchor not in _anchors(dest):
                dead.append(f"{os.path.relpath(doc, REPO)}: {target} (no such heading)")
    assert not dead, "\n".join(dead)


def test_the_anchor_rule_matches_githubs():
    assert _slug("7. Durability modes") == "7-durability-modes"
    assert _slug("Metrics: `cometmp metrics DIR`, `CometCollector`") == "metrics-cometmp-metrics-dir-cometcollector"
