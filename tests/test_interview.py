"""Chapter 12's mock interview reads every number it quotes from the committed results."""

from __future__ import annotations

import json

import pytest

from visual_search import config, interview
from visual_search.scale.capacity import load_measurements, plan


def test_every_step_has_points_and_its_numbers_come_from_the_results():
    steps = interview.steps()
    assert [s.key for s in steps] == list(interview.MINUTES)
    for step in steps:
        assert step.points and step.source, step.key
        assert step.markdown().startswith(f"### {step.title} ({step.minutes} min)")
    encoders = json.loads((config.RESULTS_DIR / "bench_encoders.json").read_text())["metrics"]
    model = interview.model()
    assert model.numbers["class P@1, committed encoder"] == f"{encoders['self-supervised CNN (committed)']['P@1']:.3f}"
    p = plan(200e9, 64, "ivfpq:m=16", 20_000, 256, measurements=load_measurements())
    assert interview.scale().numbers["shards x replicas = machines"] == f"{p['shards']} x {p['replicas']} = {p['machines']:,}"


def test_the_plan_moves_with_its_inputs():
    small, large = interview.scale(images=100e9), interview.scale(images=200e9)
    assert small.numbers["index memory"] != large.numbers["index memory"]


def test_a_missing_results_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "RESULTS_DIR", tmp_path)
    interview._results.cache_clear()
    try:
        with pytest.raises(interview.InterviewError, match="bench_serve.json"):
            interview.serving()
    finally:
        monkeypatch.undo()
        interview._results.cache_clear()
