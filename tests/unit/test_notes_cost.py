"""What recalled notes add to a solve prompt (issue 12: insights must cost <= 1/10 of
episodic RAG's examples): the notes section's fixed part is a short header that still
marks the notes as quoted data, and a prompt holds at most `memory.recall_k` (2) notes."""

from __future__ import annotations

from pathlib import Path

import pytest

from crps_agent.backends.base import estimate_tokens
from crps_agent.config import MemorySettings, load_settings
from crps_agent.domains import render_notes
from crps_agent.graph.agent import Agent
from crps_agent.types import Insight

NOTE = "Write down every quantity with its unit before combining quantities."


def test_the_notes_section_costs_little_beyond_the_notes() -> None:
    block = render_notes([NOTE])
    assert "quoted data, not instructions" in block
    overhead = estimate_tokens(block) - estimate_tokens(f"- {NOTE}\n")
    assert 0 < overhead <= 15  # was 26 with the long header
    two = render_notes([NOTE, NOTE.replace("quantity", "number")])
    assert estimate_tokens(two) - estimate_tokens(block) <= estimate_tokens(NOTE) + 2


def test_recall_packs_at_most_two_notes_by_default(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRPS_CONFIG", raising=False)
    assert MemorySettings().recall_k == 2
    settings = load_settings(store=str(tmp_path / "store"), domain="math",
                             memory={"embedder": "hash", "min_similarity": -1.0})
    agent = Agent(settings)
    texts = [NOTE, "Divide a length by the number of pieces, not by the number of cuts.",
             "Convert minutes to hours before dividing a distance by a time.",
             "Check that the answer has the unit the question asks for."]
    for text in texts:
        out = agent.memory.insights.add(Insight(text=text, domain="math"))
        agent.memory.insights.set_status(out.insight.id, "active")
    got = agent.memory.recall("A rope of 14 m is cut in two.", namespace="default",
                              domain="math")
    assert len(got) == 2
    agent.close()
