"""The report's health section (openseer.report.plots.health_section) from metrics rows and a summary."""

import pytest

from openseer.report.plots import health_section

pytest.importorskip("matplotlib")


def test_the_health_figure_names_the_best_step_and_each_warning_is_a_note(tmp_path):
    rows = [{"step": s, "loss": 1.0} for s in range(1, 7)]
    for r, rank in zip(rows[1::2], (3.0, 5.5, 4.0), strict=True):
        r.update(health_rankme=rank, health_alpha_req=1.2, health_feature_std=0.05)
    summary = {
        "best_label_free": {"step": 4, "score": 5.5, "signal": "health_rankme"},
        "collapse_warnings": [
            {"signal": "z_std", "step": 6, "value": 0.001, "line": 0.01, "direction": "below", "remedy": "do X"}
        ],
    }
    figures, notes = health_section(rows, summary, tmp_path)
    assert figures == [
        ("Is it learning? Label-free health signals (best label-free step 4: RankMe 5.50)", "health.png")
    ]
    assert (tmp_path / "health.png").stat().st_size > 0
    assert notes == ["collapse warning at step 6: z_std=0.001 stayed below 0.01; do X"]
    # a run without health rows: no figure, no note
    assert health_section([{"step": 1, "loss": 1.0}], {}, tmp_path / "none") == ([], [])
