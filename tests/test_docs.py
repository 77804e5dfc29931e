"""The README stays true: its settings table, its links, its two commands."""

from __future__ import annotations

import re

from services.runner import settings_doc
from services.runner.processes import ROOT

README = ROOT / "README.md"


def test_settings_table_is_current() -> None:
    text = README.read_text()
    table = text[
        text.index(settings_doc.BEGIN) + len(settings_doc.BEGIN) : text.index(settings_doc.END)
    ].strip()
    assert table == settings_doc.markdown(), (
        "README settings table is stale: run `python -m services.runner.settings_doc --update`"
    )


def test_every_setting_has_a_meaning() -> None:
    assert all(meaning for *_, meaning in settings_doc.rows())


def test_local_links_resolve() -> None:
    for doc in [README, *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text
