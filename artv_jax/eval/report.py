"""The evaluation's outputs in the workdir: a results table (markdown + JSON) and drift plots.

`write_report` takes one `synthetic_metrics.aggregate`-shaped result per model,
``{'metrics': {name: float}, 'curves': {name: [T] array}, ...}`` (standard metrics such as FVD
are more entries of 'metrics'), and writes

    <name>.md          one row per model, one column per metric, then the notes
    <name>.json        the same numbers and the curves (NaN as null)
    <name>_<curve>.png one line per model over the frame index, e.g. results_drift_color.png

into a folder that may be a URI (gs://...), each file through a temporary name and a rename.
Plots are drawn with Pillow (already needed by imageio), not matplotlib, which the project
does not otherwise depend on.
"""

import json
import math
import os
from typing import Any, Mapping, Sequence

from etils import epath
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from artv_jax import paths

# Tableau's ten categorical colours: distinguishable, and the usual order in plots.
LINE_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
_MARGIN = (60, 30, 20, 45)  # left, top, right, bottom: room for tick labels and titles
_GRID = (225, 225, 225)
_INK = (40, 40, 40)


def _format(value: Any) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  return f"{float(value):.4g}"


def markdown_table(results: Mapping[str, Mapping[str, Any]],
                   columns: Sequence[str] | None = None) -> str:
  """Markdown table of `results` {model: {'metrics': {name: value}}}: a row per model.

  `columns` picks and orders the metrics (default: every metric, in first-seen order); a
  model without a metric shows "–".
  """
  if columns is None:
    columns = list(dict.fromkeys(n for r in results.values() for n in r["metrics"]))
  lines = ["| model | " + " | ".join(columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for model, result in results.items():
    cells = [_format(result["metrics"].get(name)) for name in columns]
    lines.append(f"| {model} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
  """Arrays to lists and NaN to None, recursively (strict JSON has no NaN)."""
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(value) else float(value)
  return value


def _ticks(low: float, high: float, max_ticks: int = 6) -> np.ndarray:
  """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
  span = max(high - low, 1e-12)
  for step in (m * 10.0**math.floor(math.log10(span / max_ticks)) for m in (1, 2, 5, 10)):
    if span / step <= max_ticks:
      break
  return np.arange(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1) * step


def line_plot(path: paths.PathLike, series: Mapping[str, np.ndarray], *, title: str = "",
              xlabel: str = "frame", ylabel: str = "",
              size: tuple[int, int] = (640, 400)) -> None:
  """Writes a PNG line plot: one line per entry of `series` {label: [T] y values, x = the
  index}; NaN values leave gaps."""
  if len(series) > len(LINE_COLORS):
    raise ValueError(f"{len(series)} lines but only {len(LINE_COLORS)} colours; plot fewer "
                     "models per figure")
  width, height = size
  left, top, right, bottom = _MARGIN
  box = (left, top, width - right, height - bottom)
  values = [np.asarray(y, np.float64) for y in series.values()]
  finite = np.concatenate([y[np.isfinite(y)] for y in values] + [np.zeros(1)])
  x_max = max([len(y) - 1 for y in values] + [1])
  y_low, y_high = min(0.0, finite.min()), finite.max()
  if y_high <= y_low:
    y_high = y_low + 1.0
  y_ticks = _ticks(y_low, y_high)
  if y_ticks[-1] < y_high and len(y_ticks) > 1:  # End the axis on a labelled tick.
    y_high = y_ticks[-1] + (y_ticks[1] - y_ticks[0])
    y_ticks = _ticks(y_low, y_high)

  def to_pixel(x, y):
    return (box[0] + (box[2] - box[0]) * x / x_max,
            box[3] - (box[3] - box[1]) * (y - y_low) / (y_high - y_low))

  image = Image.new("RGB", size, (255, 255, 255))
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default()
  for y in y_ticks:
    _, py = to_pixel(0, y)
    draw.line([(box[0], py), (box[2], py)], fill=_GRID)
    draw.text((box[0] - 4, py), f"{y:.3g}", fill=_INK, font=font, anchor="rm")
  for x in _ticks(0, x_max):
    px, _ = to_pixel(x, y_low)
    draw.line([(px, box[1]), (px, box[3])], fill=_GRID)
    draw.text((px, box[3] + 4), f"{x:.0f}", fill=_INK, font=font, anchor="mt")
  draw.rectangle(box, outline=_INK)
  for y, color in zip(values, LINE_COLORS):
    points = [to_pixel(x, v) if np.isfinite(v) else None for x, v in enumerate(y)]
    for a, b in zip(points, points[1:]):
      if a is not None and b is not None:
        draw.line([a, b], fill=color, width=2)
  for i, (label, color) in enumerate(zip(series, LINE_COLORS)):
    y = box[1] + 10 + 14 * i
    draw.line([(box[2] - 150, y), (box[2] - 130, y)], fill=color, width=2)
    draw.text((box[2] - 125, y), str(label), fill=_INK, font=font, anchor="lm")
  draw.text((width / 2, top / 2), title, fill=_INK, font=font, anchor="mm")
  draw.text(((box[0] + box[2]) / 2, height - 12), xlabel, fill=_INK, font=font, anchor="mm")
  draw.text((6, top / 2), ylabel, fill=_INK, font=font, anchor="lm")
  with paths.atomic_output(path) as local:
    image.save(local)


def write_report(workdir: paths.PathLike, results: Mapping[str, Mapping[str, Any]], *,
                 name: str = "results", columns: Sequence[str] | None = None,
                 title: str = "", notes: Sequence[str] = ()) -> dict[str, str]:
  """Writes the table, its JSON and one plot per curve for `results` {model: result}; `notes`
  become a list under the table.

  Returns:
    {'markdown': path, 'json': path, <curve name>: png path, ...}.
  """
  workdir = epath.Path(workdir)
  files = {"markdown": workdir / f"{name}.md", "json": workdir / f"{name}.json"}
  markdown = (f"# {title}\n\n" if title else "") + markdown_table(results, columns)
  if notes:
    markdown += "\n" + "".join(f"- {note}\n" for note in notes)
  paths.write_atomic(files["markdown"], markdown)
  paths.write_atomic(files["json"], json.dumps(_jsonable(results), indent=1))
  curve_names = dict.fromkeys(c for r in results.values() for c in r.get("curves", {}))
  for curve in curve_names:
    files[curve] = workdir / f"{name}_{curve.replace('/', '_')}.png"
    line_plot(files[curve],
              {model: r["curves"][curve] for model, r in results.items()
               if curve in r.get("curves", {})},
              title=f"{curve} vs. frame 0", ylabel=curve)
  return {key: os.fspath(path) for key, path in files.items()}
