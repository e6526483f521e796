"""The report's health section (openseer.report.plots.health_section) from metrics rows and a summary."""

import pytest

from openseer.report.plots import health_section, plot_health

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


def _panels(path) -> int:
    """Panels in a health figure: each is 4 inches wide at 90 dpi."""
    from PIL import Image

    with Image.open(path) as im:
        return round(im.width / 360)


def test_the_method_output_signals_share_the_backbone_panels_and_codes_get_their_own(tmp_path):
    backbone = [
        {"step": s, "health_rankme": 3.0 + s, "health_alpha_req": 1.1, "health_feature_std": 0.05} for s in (2, 4)
    ]
    assert _panels(plot_health(backbone, tmp_path / "backbone.png")) == 3
    head = [dict(r, health_head_rankme=2.0, health_head_alpha_req=0.9, health_head_std=0.08) for r in backbone]
    assert _panels(plot_health(head, tmp_path / "head.png", best_step=4)) == 3  # beside the backbone's lines
    codes = [dict(r, health_code_entropy=0.7, health_code_occupancy=0.5) for r in head]
    assert _panels(plot_health(codes, tmp_path / "codes.png")) == 4
