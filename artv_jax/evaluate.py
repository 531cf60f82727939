"""The evaluation command: held-out videos from a trained run, scored, in a results table.

  python -m artv_jax.main --config=configs/demo.py --workdir=DIR --mode=eval
  python -m artv_jax.evaluate --out=DIR plain_ar=DIR1 full=DIR2 ...   # one table for all

:func:`evaluate` restores the run's parameters once and, for each held-out prompt schedule
(:func:`artv_jax.eval.prompts.heldout_schedules`: colour/shape/motion triples the training split
never shows, turning their motion at every new segment), generates a text-to-video sample with
the scan sampler, settings as ``config.sample`` apart from the prompts and the length. The
frames are scored as the sampler hands them over, before the lossy H.264 of the written video
(whose noise alone would read as a few levels of colour drift). Written into WORKDIR/eval/:

    <i>/video.mp4, video.gif, contact_sheet.png, sample.json   held-out video i
    results.md, results.json        the run's row: metrics averaged over the videos
    results_drift_<curve>.png       drift vs. frame 0 over time
    videos.md, videos.json, videos_drift_<curve>.png   the same, one row / line per video
    mask_steps.png, mask_mean.png   the mask at each denoising step of one frame made from the
                                    first held-out video's true first frame (eval/mask_trace.py)

Standard metrics join the table when their feature network is configured (empty: skipped, and
the report says so): ``config.eval.i3d`` gives FVD between 16-frame clips of the generated
videos and as many clips of the held-out split, ``config.eval.clip`` the CLIP similarity of
every frame to its active prompt.

:func:`compare_runs` merges the results.json of several runs (e.g. the ablations of
benchmarks/ablations.sh) into one table and drift plots with one line per run. Workdirs and
the output folder may be URIs (gs://...).
"""
import argparse
import json
import math
import sys
from typing import Any, Mapping, Optional, Sequence

from etils import epath
import jax
import ml_collections
import numpy as np
from absl import logging

from artv_jax import build, generate, parallel, paths, sampling, video_writer
from artv_jax.data import synthetic_shapes, tfds_synthetic
from artv_jax.eval import clip_score, fvd, mask_trace, prompts, report, synthetic_metrics
from artv_jax.eval.convert_feature_nets import load_feature_net

EVAL_DIR = "eval"
RESULTS = "results"  # WORKDIR/eval/results.{md,json}: the run's row
VIDEOS = "videos"  # WORKDIR/eval/videos.{md,json}: a row per held-out video


def eval_sample_config(config: ml_collections.ConfigDict,
                       schedule: prompts.Schedule) -> ml_collections.ConfigDict:
  """``config.sample`` for one held-out video: its prompts and ``config.eval.num_frames``."""
  sample = ml_collections.ConfigDict(config.sample.to_dict())
  sample.prompts = schedule
  sample.num_frames = config.eval.num_frames
  sample.prompts_text = ""
  sample.init = ""  # text-to-video: frame 0 comes from the model
  return sample


def active_prompts(schedule: Sequence[Sequence], num_frames: int) -> list[str]:
  """The caption in force at each of ``num_frames`` frames."""
  starts, captions = sampling.parse_prompts(schedule)
  ends = [min(end, num_frames) for end in starts[1:] + [num_frames]]
  return [caption for start, end, caption in zip(starts, ends, captions)
          for _ in range(max(0, end - start))]


def fvd_clips(frames: np.ndarray, length: int) -> np.ndarray:
  """Consecutive non-overlapping clips of a video: [T, H, W, 3] -> [T // length, length, H,
  W, 3] (a last partial clip is left out)."""
  count = len(frames) // length
  return frames[:count * length].reshape((count, length) + frames.shape[1:])


def heldout_clips(indices: Sequence[int], length: int, resolution: int, seed: int,
                  variant: str = "") -> np.ndarray:
  """Clips of the synthetic data set's held-out split (of clip mix ``variant``):
  [len(indices), length, R, R, 3]."""
  distribution = tfds_synthetic.builder_config(resolution, variant).distribution()
  return np.stack([
      synthetic_shapes.generate_clip(seed, "heldout", index, num_frames=length,
                                     height=resolution, width=resolution,
                                     **distribution).frames
      for index in indices])


def trained_mix(config: ml_collections.ConfigDict) -> tfds_synthetic.SyntheticShapesConfig:
  """The synthetic clip mix the run was trained on (``config.data.variant``)."""
  return tfds_synthetic.builder_config(config.data.resolution, config.data.variant)


def _check_config(config: ml_collections.ConfigDict) -> tuple[prompts.Schedule, ...]:
  """The held-out schedules ``config.eval`` asks for; raises on a config that cannot work."""
  if config.data.dataset != "synthetic_shapes":
    raise ValueError(
        f"--mode=eval scores held-out prompts of the synthetic shapes data set, but "
        f"config.data.dataset is '{config.data.dataset}'; evaluate a model trained on "
        "'synthetic_shapes' (configs/demo.py, configs/ablations/).")
  e = config.eval
  schedules = prompts.heldout_schedules(e.num_frames, e.num_segments,
                                        trained_mix(config).backgrounds)
  if not 1 <= e.num_videos <= len(schedules):
    raise ValueError(f"config.eval.num_videos={e.num_videos} must be in [1, "
                     f"{len(schedules)}] (one video per held-out colour/shape/motion triple).")
  return schedules[:e.num_videos]


def generate_heldout_video(models: build.Models, params: Any,
                           config: ml_collections.ConfigDict, schedule: prompts.Schedule,
                           out_dir: paths.PathLike, seed: int,
                           inputs: dict) -> Optional[np.ndarray]:
  """Generates one held-out video into out_dir (from scratch) and returns its frames
  [T, H, W, 3] uint8 as the sampler made them (None on the processes that do not write).
  inputs: ``generate.video_inputs``."""
  chunks = []
  generate.generate_video(
      models.artv, params, models.schedule, eval_sample_config(config, schedule),
      out_dir, seed=seed, resume=False,
      on_frames=lambda first, frames: chunks.append(frames), **inputs)
  return np.concatenate(chunks) if chunks else None


class FeatureMetrics:
  """FVD and CLIP similarity over the held-out videos, for the feature nets configured.

  Videos are added one at a time (only I3D statistics and similarity sums are kept); each
  skipped metric leaves a note saying why.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self._config = config
    e = config.eval
    self.notes = []
    self._i3d = self._clip = None
    self._generated = None  # FeatureStats of the generated clips
    self._similarities = []  # mean CLIP similarity of each video
    if not e.i3d:
      self.notes.append("FVD: skipped (config.eval.i3d is empty; convert an I3D with "
                        "python -m artv_jax.eval.convert_feature_nets --kind=i3d).")
    elif e.num_frames < fvd.FVD_NUM_FRAMES:
      self.notes.append(f"FVD: skipped (config.eval.num_frames={e.num_frames} is shorter "
                        f"than one {fvd.FVD_NUM_FRAMES}-frame clip).")
    else:
      self._i3d = load_feature_net(e.i3d)
    if e.clip:
      self._clip = load_feature_net(e.clip)
    else:
      self.notes.append("CLIP similarity: skipped (config.eval.clip is empty; convert a "
                        "CLIP model with python -m artv_jax.eval.convert_feature_nets "
                        "--kind=clip).")

  def add(self, frames: np.ndarray, schedule: prompts.Schedule) -> None:
    """Accumulates one generated video [T, H, W, 3] uint8 of ``schedule``."""
    if self._i3d is not None:
      stats = fvd.video_statistics(self._i3d, [fvd_clips(frames, fvd.FVD_NUM_FRAMES)])
      self._generated = stats if self._generated is None else self._generated.merge(stats)
    if self._clip is not None:
      similarity = clip_score.clip_similarity(self._clip, frames,
                                              active_prompts(schedule, len(frames)))
      self._similarities.append(float(np.mean(similarity)))

  def metrics(self) -> dict[str, float]:
    """{'fvd': ..., 'clip_similarity': ...}, for the metrics that were computed."""
    metrics = {}
    if self._i3d is not None:
      count = self._generated.count
      per_batch = self._config.eval.num_frames // fvd.FVD_NUM_FRAMES
      # The same batch shape as the generated clips: one compilation.
      real = fvd.video_statistics(self._i3d, (
          heldout_clips(range(start, start + per_batch), fvd.FVD_NUM_FRAMES,
                        self._config.data.resolution, self._config.seed,
                        self._config.data.variant)
          for start in range(0, count, per_batch)))
      metrics["fvd"] = fvd.fvd(real, self._generated)
      self.notes.append(f"FVD: {count} generated {fvd.FVD_NUM_FRAMES}-frame clips against "
                        f"{real.count} clips of the held-out split (I3D logits; compare only "
                        "with FVDs over as many clips).")
    if self._clip is not None:
      metrics["clip_similarity"] = float(np.mean(self._similarities))
    return metrics


def write_mask_plots(models: build.Models, params: Any, config: ml_collections.ConfigDict,
                     schedule: prompts.Schedule, eval_dir: paths.PathLike,
                     inputs: dict) -> tuple[dict[str, str], str]:
  """The mask trace of frame 1 of ``schedule``'s ground truth (mask_trace.py): its plots'
  paths and a note with the mean mask per step. inputs: ``generate.video_inputs``. Every
  process traces (the parameters are split over all of them); process 0 writes."""
  size = config.data.resolution
  first = prompts.render_schedule(schedule, 1, size, size)[0]
  first_latent = inputs["codec"].encode(first.astype(np.float32) / 127.5 - 1.0)[0]
  prompt = schedule[0][1]
  settings = sampling.SamplerSettings.from_config(config.sample, models.schedule.prediction_type)
  trace = mask_trace.mask_trace(models.artv, params, models.schedule, settings,
                                sampling.encode_prompts(inputs["encode_text"], [(0, prompt)]),
                                first_latent, jax.random.PRNGKey(config.seed))
  generated = video_writer.to_uint8(
      parallel.fetch(inputs["codec"].decode(trace.latent[None])))[0]
  if jax.process_index() != 0:
    return {}, ""
  files = mask_trace.write_mask_plots(trace, first[0], generated, epath.Path(eval_dir) / "mask",
                                      title=f"mask per step: {prompt}")
  means = ", ".join(f"{m:.2f}" for m in trace.masks.mean(axis=(1, 2)))
  note = (f"Mask M per denoising step (t = {trace.timesteps[0]} ... {trace.timesteps[-1]}) of "
          f"frame 1 after the true frame 0 of '{prompt}', mean over pixels: {means}.")
  return files, note


def evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> dict[str, str]:
  """Generates and scores the held-out videos of the run in ``workdir`` (see the module doc).

  Returns:
    The paths ``report.write_report`` wrote for the run's results: {'markdown', 'json',
    'drift/color', 'drift/size', 'drift/background'}, and with a mask 'mask/steps',
    'mask/mean'.
  """
  schedules = _check_config(config)
  features = FeatureMetrics(config)  # first: a wrong feature-net path fails fast
  models, params, step = generate.restore_params(config, workdir)
  eval_dir = epath.Path(workdir) / EVAL_DIR
  inputs = generate.video_inputs(models, config)
  settings = synthetic_metrics.Settings(walled=trained_mix(config).walled)
  scores = []
  for i, schedule in enumerate(schedules):
    frames = generate_heldout_video(models, params, config, schedule, eval_dir / str(i),
                                    config.seed + i, inputs)
    if frames is None:  # Another process scores and writes.
      continue
    scores.append(synthetic_metrics.evaluate_video(frames, schedule, settings))
    features.add(frames, schedule)
    logging.info("held-out video %d/%d: %s", i + 1, len(schedules),
                 ", ".join(f"{k}={v:.3g}" for k, v in scores[-1]["metrics"].items()))

  mask_paths = {}
  if config.model.use_mask:  # else M is 1 everywhere: nothing to see
    mask_paths, mask_note = write_mask_plots(models, params, config, schedules[0], eval_dir,
                                             inputs)
    features.notes.append(mask_note)
  if jax.process_index() != 0:
    return {}
  e = config.eval
  run = paths.resolve(workdir).name
  result = synthetic_metrics.aggregate(scores)
  result["metrics"].update(features.metrics())
  description = (f"{len(schedules)} held-out videos of {e.num_frames} frames, "
                 f"{e.num_segments} prompts each, checkpoint step {step}")
  result.update(step=step, description=description, notes=features.notes,
                schedules=schedules)
  files = report.write_report(eval_dir, {run: result}, name=RESULTS,
                              title=f"{run}: {description}", notes=features.notes)

  per_video = {str(i): {"metrics": s["metrics"], "curves": s["curves"],
                        "schedule": schedule, "switches": s["switches"]}
               for i, (s, schedule) in enumerate(zip(scores, schedules))}
  video_notes = [f"{i}: " + " | ".join(f"{start}: {caption}" for start, caption in schedule)
                 for i, schedule in enumerate(schedules)]
  report.write_report(eval_dir, per_video, name=VIDEOS, title=f"{run}: each held-out video",
                      notes=video_notes)
  logging.info("Wrote %s", files["markdown"])
  return {**files, **{f"mask/{name}": path for name, path in mask_paths.items()}}


def _load_results(workdir: paths.PathLike) -> dict[str, Any]:
  """The run's entry of WORKDIR/eval/results.json, curves as float arrays (null -> NaN)."""
  path = epath.Path(workdir) / EVAL_DIR / f"{RESULTS}.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist: evaluate the run first "
                            f"(python -m artv_jax.main --mode=eval --workdir={workdir}).")
  (result,) = json.loads(path.read_text()).values()
  nan = lambda v: math.nan if v is None else v
  result["metrics"] = {name: nan(v) for name, v in result["metrics"].items()}
  result["curves"] = {name: np.array([nan(v) for v in curve], np.float64)
                      for name, curve in result["curves"].items()}
  return result


def compare_runs(workdirs: Mapping[str, paths.PathLike], out_dir: paths.PathLike,
                 name: str = "comparison") -> dict[str, str]:
  """One table and drift plots (a line per run) from the evaluations of several runs.

  Args:
    workdirs: {run name: workdir evaluated by :func:`evaluate`}, in table order.
    out_dir: where ``<name>.md``, ``<name>.json`` and ``<name>_drift_*.png`` go.

  Returns:
    The paths ``report.write_report`` wrote.
  """
  results = {run: _load_results(workdir) for run, workdir in workdirs.items()}
  return report.write_report(
      out_dir, results, name=name, title="Held-out evaluation: " + ", ".join(results),
      notes=[f"{run} ({workdirs[run]}): {r.get('description', '')}"
             for run, r in results.items()])


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      description="Merge the --mode=eval results of several runs into one table and plots.")
  parser.add_argument("--out", required=True, help="Output folder of the comparison.")
  parser.add_argument("--name", default="comparison", help="File name stem of the outputs.")
  parser.add_argument("runs", nargs="+", metavar="NAME=WORKDIR",
                      help="Evaluated runs, in table order.")
  args = parser.parse_args(argv)
  runs = dict(run.split("=", 1) for run in args.runs if "=" in run)
  if len(runs) != len(args.runs):
    parser.error(f"runs must be NAME=WORKDIR with distinct names, got {args.runs}")
  try:
    files = compare_runs(runs, args.out, args.name)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(epath.Path(files["markdown"]).read_text())
  return 0


if __name__ == "__main__":
  sys.exit(main())
