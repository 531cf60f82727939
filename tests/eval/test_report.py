"""Tests of the results table, its JSON and the drift plots."""

import json

import imageio.v3 as iio
import numpy as np

from artv_jax.eval import report

RESULTS = {
    "plain AR": {"metrics": {"following/all": 0.5, "drift/color@256": 12.0},
                 "curves": {"drift/color": np.linspace(0.0, 12.0, 256)}, "num_videos": 2},
    "ART·V": {"metrics": {"following/all": 0.97, "drift/color@256": float("nan")},
              "curves": {"drift/color": np.linspace(0.0, 3.0, 256)}, "num_videos": 2},
}


def test_markdown_table_has_a_row_per_model_and_a_column_per_metric():
  lines = report.markdown_table(RESULTS).splitlines()
  assert lines[0] == "| model | following/all | drift/color@256 |"
  assert lines[2] == "| plain AR | 0.5 | 12 |"
  assert lines[3] == "| ART·V | 0.97 | – |"


def test_json_keeps_numbers_and_writes_nan_as_null(tmp_path):
  paths = report.write_report(str(tmp_path), RESULTS)
  with open(paths["json"], encoding="utf-8") as f:
    data = json.load(f)
  assert data["plain AR"]["metrics"] == {"following/all": 0.5, "drift/color@256": 12.0}
  assert data["ART·V"]["metrics"]["drift/color@256"] is None
  np.testing.assert_allclose(data["ART·V"]["curves"]["drift/color"], np.linspace(0, 3, 256))


def test_write_report_writes_table_json_and_a_plot_per_curve(tmp_path):
  paths = report.write_report(str(tmp_path), RESULTS, name="synthetic", title="Ablations")
  assert set(paths) == {"markdown", "json", "drift/color"}
  assert paths["drift/color"].endswith("synthetic_drift_color.png")
  with open(paths["markdown"], encoding="utf-8") as f:
    assert f.read().startswith("# Ablations\n\n| model |")


def test_plot_draws_one_line_per_model(tmp_path):
  path = str(tmp_path / "plot.png")
  report.line_plot(path, {m: r["curves"]["drift/color"] for m, r in RESULTS.items()})
  image = iio.imread(path)[..., :3]
  for color in report.LINE_COLORS[:2]:
    # A line across the plot, far more than its 20-pixel legend swatch.
    assert np.all(image == color, axis=-1).sum() > 400
  assert not np.all(image == report.LINE_COLORS[2], axis=-1).any()
