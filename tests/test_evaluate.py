"""The evaluation command (held-out videos of a checkpoint, scored into a report), the merged
table of several runs, and the ablation configs."""
import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from artv_jax import evaluate, train
from artv_jax.checkpoints import training as training_checkpoints
from artv_jax.eval import prompts
from configs import demo
from configs.ablations import full, masked, plain_ar, ref_noise
from tests import tiny_config
from tests.eval.test_clip_score import converted, tiny_clip  # noqa: F401 (fixtures)

NUM_FRAMES = 8
NUM_VIDEOS = 2


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  """(config, workdir, report paths) of a freshly initialised tiny run, evaluated. The
  checkpoint is the initial state: training even a few steps would cost more than the rest."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config.get_config()
  config.eval.update(num_frames=NUM_FRAMES, num_segments=2, num_videos=NUM_VIDEOS)
  trainer = train.make_trainer(config, workdir)
  state = trainer.init_state()
  manager = training_checkpoints.checkpoint_manager(workdir, config.train.keep_checkpoints)
  manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()
  return config, workdir, evaluate.evaluate(config, workdir)


@pytest.mark.slow
def test_eval_writes_the_run_row_with_the_metrics_and_plots(evaluated):
  _, workdir, paths = evaluated
  with open(paths["json"]) as f:
    (run, result), = json.load(f).items()
  assert run == os.path.basename(workdir)
  assert {"presence", "following/all", "following/direction", "jerk_px",
          "switch/latency"} <= result["metrics"].keys()
  assert result["num_videos"] == NUM_VIDEOS and result["step"] == 0
  assert len(result["curves"]["drift/color"]) == NUM_FRAMES
  for curve in ("drift/color", "drift/size", "drift/background"):
    assert os.path.getsize(paths[curve]) > 0
  with open(paths["markdown"]) as f:
    markdown = f.read()
  assert "following/all" in markdown and "FVD: skipped" in markdown
  assert "Mask M per denoising step" in markdown
  for plot in ("mask/steps", "mask/mean"):
    assert os.path.getsize(paths[plot]) > 0


@pytest.mark.slow
def test_eval_generates_each_heldout_schedule_into_its_own_folder(evaluated):
  config, workdir, _ = evaluated
  backgrounds = evaluate.trained_mix(config).backgrounds
  schedules = prompts.heldout_schedules(NUM_FRAMES, config.eval.num_segments, backgrounds)
  for i in range(NUM_VIDEOS):
    with open(os.path.join(workdir, "eval", str(i), "sample.json")) as f:
      info = json.load(f)
    assert info["frames_written"] == NUM_FRAMES
    assert info["prompts"] == [list(p) for p in schedules[i]]
  with open(os.path.join(workdir, "eval", "videos.json")) as f:
    assert list(json.load(f)) == [str(i) for i in range(NUM_VIDEOS)]


@pytest.mark.slow
def test_compare_runs_puts_every_run_in_one_table(evaluated, tmp_path):
  _, workdir, _ = evaluated
  paths = evaluate.compare_runs({"plain_ar": workdir, "full": workdir}, str(tmp_path))
  with open(paths["json"]) as f:
    results = json.load(f)
  assert list(results) == ["plain_ar", "full"]
  assert results["plain_ar"]["metrics"] == results["full"]["metrics"]
  with open(paths["markdown"]) as f:
    rows = [line for line in f if line.startswith(("| plain_ar ", "| full "))]
  assert len(rows) == 2
  assert os.path.isfile(os.path.join(tmp_path, "comparison_drift_color.png"))


def test_compare_runs_names_a_run_that_was_not_evaluated(tmp_path):
  assert evaluate.main(["--out", str(tmp_path), f"x={tmp_path / 'missing'}"]) == 2


def test_active_prompts_follow_the_schedule_and_stop_at_the_video_end():
  schedule = ((0, "a"), (2, "b"), (9, "c"))
  assert evaluate.active_prompts(schedule, 5) == ["a", "a", "b", "b", "b"]


def test_fvd_clips_are_consecutive_and_drop_the_partial_clip():
  frames = np.arange(37)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  clips = evaluate.fvd_clips(frames, 16)
  assert clips.shape == (2, 16, 2, 2, 3)
  np.testing.assert_array_equal(clips[1, :, 0, 0, 0], np.arange(16, 32))


def test_clip_similarity_joins_the_metrics_and_fvd_says_why_it_is_missing(converted):
  config = tiny_config.get_config()
  config.eval.update(num_frames=NUM_FRAMES, clip=str(converted))
  features = evaluate.FeatureMetrics(config)
  schedule = prompts.heldout_schedules(NUM_FRAMES, 2)[0]
  for seed in range(2):
    features.add(np.random.default_rng(seed).integers(0, 256, (NUM_FRAMES, 32, 32, 3),
                                                      np.uint8), schedule)
  metrics = features.metrics()
  assert metrics.keys() == {"clip_similarity"} and -1 <= metrics["clip_similarity"] <= 1
  assert any(note.startswith("FVD: skipped") for note in features.notes)


def _flat(config) -> dict:
  flat = {}

  def walk(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(value, f"{prefix}{key}.")
      else:
        flat[prefix + key] = value

  walk(config.to_dict(), "")
  return flat


def _changed(config, base) -> set[str]:
  a, b = _flat(config.get_config()), _flat(base.get_config())
  return {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}


@pytest.mark.parametrize("config, base, fields", [
    (plain_ar, demo, {"model.use_anchor", "model.use_mask", "model.use_ref_noise_embedding",
                      "diffusion.max_ref_noise_level", "sample.ref_noise_level"}),
    (ref_noise, plain_ar, {"model.use_ref_noise_embedding", "diffusion.max_ref_noise_level",
                           "sample.ref_noise_level"}),
    (masked, ref_noise, {"model.use_mask"}),
    (full, masked, {"model.use_anchor"}),
    (full, demo, set()),
])
def test_each_ablation_adds_one_idea_with_the_same_budget(config, base, fields):
  assert _changed(config, base) == fields
