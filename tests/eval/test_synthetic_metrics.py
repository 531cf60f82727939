"""Tests of the synthetic-video metrics on videos whose answers are known."""

import dataclasses

import numpy as np
import pytest

from artv_jax.data import synthetic_shapes as ss
from artv_jax.eval import prompts
from artv_jax.eval import synthetic_metrics as sm

RES = 32
RIGHT = ((0, "a red circle moves right on a gray background"),)
LEFT = ((0, "a red circle moves left on a gray background"),)
TURN = ((0, "a blue square moves right on a black background"),
        (24, "a blue square moves down on a black background"))
BOUNCE_THEN_RIGHT = ((0, "a yellow square bounces around on a white background"),
                     (32, "a yellow square moves right on a white background"))


def _ground_truth(schedule, num_frames=48):
  frames, _ = prompts.render_schedule(schedule, num_frames, RES, RES)
  return frames


def _render_frames(spec, centers_xy, sizes):
  """One frame per (centre, size), both in frame fractions: [T, RES, RES, 3] uint8."""
  return np.concatenate([
      ss.render_clip(dataclasses.replace(spec, start_xy=tuple(c), size=float(s)), 1, RES, RES)[0]
      for c, s in zip(centers_xy, sizes)])


@pytest.mark.parametrize("resolution", [32, 64])
def test_detection_reads_colour_and_shape_of_ground_truth(resolution):
  for split in ss.SPLITS:
    for index in range(12):
      clip = ss.generate_clip(0, split, index, num_frames=4, height=resolution, width=resolution)
      found, _ = sm.detect_objects(clip.frames)
      assert found.present.all(), clip.spec
      assert (found.color == clip.spec.color).all(), clip.spec
      assert (found.shape == clip.spec.shape).all(), (clip.spec, found.fill, found.skew)


@pytest.mark.parametrize("resolution", [32, 64])
def test_detection_finds_centre_and_area_of_ground_truth(resolution):
  for index in range(12):
    clip = ss.generate_clip(1, "train", index, num_frames=4, height=resolution, width=resolution)
    found, _ = sm.detect_objects(clip.frames)
    area = {"circle": np.pi, "square": 4.0, "triangle": 2.0}[clip.spec.shape] * clip.size**2
    np.testing.assert_allclose(found.area, area, rtol=0.05)
    if clip.spec.shape != "triangle":  # A triangle's centroid is not its box centre.
      offset = np.mod(found.center_xy - clip.center_xy + resolution / 2, resolution)
      np.testing.assert_allclose(offset - resolution / 2, 0.0, atol=0.1)


@pytest.mark.parametrize("schedule", [RIGHT, TURN, BOUNCE_THEN_RIGHT])
def test_ground_truth_follows_every_prompt_without_drift(schedule):
  result = sm.evaluate_video(_ground_truth(schedule), schedule)
  for name in ("presence", "following/color", "following/shape", "following/direction",
               "following/all"):
    assert result["metrics"][name] == 1.0, name
  curves = result["curves"]
  np.testing.assert_allclose(curves["drift/color"], 0.0, atol=1.0)
  np.testing.assert_allclose(curves["drift/size"], 0.0, atol=0.02)
  np.testing.assert_allclose(curves["drift/background"], 0.0, atol=0.1)


def test_ground_truth_switches_without_latency():
  result = sm.evaluate_video(_ground_truth(TURN), TURN)
  assert result["switches"] == [{"frame": 24, "followed": True, "latency": 0}]


def test_delayed_switch_has_the_delay_as_latency():
  delay = 5
  late = ((0, TURN[0][1]), (TURN[1][0] + delay, TURN[1][1]))
  metrics = sm.evaluate_video(_ground_truth(late), TURN)["metrics"]
  assert metrics["switch/latency"] == delay and metrics["switch/success"] == 1.0


def test_linear_colour_shift_shows_as_colour_drift_with_its_slope():
  frames = _ground_truth(RIGHT, num_frames=32).astype(np.float32)
  rate = 1.5  # uint8 levels of red lost per frame
  chroma = frames.max(-1) - frames.min(-1)
  coverage = chroma / chroma.max()  # The renderer's anti-aliasing weight on a grey background.
  frames[..., 0] -= rate * np.arange(32)[:, None, None] * coverage
  settings = sm.Settings(drift_frames=(32,))
  result = sm.evaluate_video(np.round(frames).astype(np.uint8), RIGHT, settings)
  curve = result["curves"]["drift/color"]
  slope = np.polyfit(np.arange(32), curve, 1)[0]
  assert slope == pytest.approx(rate, rel=0.02)
  # Reported as the mean of the last drift_window frames up to frame 32: frames 24..31.
  assert result["metrics"]["drift/color@32"] == pytest.approx(rate * 27.5, rel=0.02)
  assert result["metrics"]["following/color"] == 1.0


def test_growing_object_shows_as_size_drift():
  spec = ss.ClipSpec(color="green", shape="square", motion="right")
  sizes = np.linspace(0.12, 0.2, 16)
  centers = np.stack([0.3 + 0.02 * np.arange(16), np.full(16, 0.5)], axis=-1)
  curve = sm.evaluate_video(_render_frames(spec, centers, sizes),
                            ((0, spec.caption),))["curves"]["drift/size"]
  np.testing.assert_allclose(1.0 + curve, (sizes / sizes[0])**2, rtol=0.05)


def test_background_change_shows_as_background_drift():
  frames = _ground_truth(RIGHT, num_frames=24).astype(np.int16)
  chroma = frames.max(-1) - frames.min(-1)
  frames[12:] += np.where(chroma[12:] == 0, 10, 0)[..., None].astype(np.int16)
  curve = sm.evaluate_video(frames.astype(np.uint8), RIGHT)["curves"]["drift/background"]
  np.testing.assert_allclose(curve[:12], 0.0, atol=1e-6)
  # Background pixels next to the object keep a little anti-aliased chroma: not shifted.
  np.testing.assert_allclose(curve[12:], 10.0, atol=0.5)


def test_wrong_direction_scores_no_direction_following():
  metrics = sm.evaluate_video(_ground_truth(LEFT), RIGHT)["metrics"]
  assert metrics["following/direction"] == 0.0 and metrics["following/all"] == 0.0
  assert metrics["following/color"] == 1.0 and metrics["following/shape"] == 1.0


def test_constant_velocity_has_almost_no_jerk():
  # Speed 0.035 * 32 = 1.1 pixels per frame, wrapping around the frame edge.
  assert sm.evaluate_video(_ground_truth(RIGHT), RIGHT)["metrics"]["jerk_px"] < 0.05


def test_jittered_trajectory_has_jerk():
  spec = ss.ClipSpec(color="red", shape="circle", motion="right")
  jitter = np.random.default_rng(0).normal(0.0, 0.5 / RES, size=(32, 2))  # 0.5 pixels
  centers = np.stack([0.2 + 0.035 * np.arange(32), np.full(32, 0.5)], axis=-1) + jitter
  jerk = sm.evaluate_video(_render_frames(spec, centers, np.full(32, spec.size)),
                           RIGHT)["metrics"]["jerk_px"]
  # |third difference| of i.i.d. noise of 0.5 pixels per axis: about 0.5 * sqrt(20 * pi / 2).
  assert 1.5 < jerk < 4.5


def test_frames_without_object_count_as_absent():
  frames = np.full((8, RES, RES, 3), 128, np.uint8)
  result = sm.evaluate_video(frames, RIGHT)
  assert result["metrics"]["presence"] == 0.0 and result["metrics"]["following/all"] == 0.0
  assert np.isnan(result["curves"]["drift/color"]).all()


def test_rejects_frames_that_are_not_uint8_videos():
  with pytest.raises(ValueError, match="uint8"):
    sm.evaluate_video(np.zeros((4, RES, RES, 3), np.float32), RIGHT)


def test_aggregate_averages_metrics_and_curves_of_unequal_videos():
  short = {"metrics": {"a": 1.0, "b": np.nan}, "curves": {"c": np.array([0.0, 2.0])}}
  long = {"metrics": {"a": 3.0, "b": 5.0}, "curves": {"c": np.array([2.0, 4.0, 6.0])}}
  result = sm.aggregate([short, long])
  assert result["metrics"] == {"a": 2.0, "b": 5.0} and result["num_videos"] == 2
  np.testing.assert_allclose(result["curves"]["c"], [1.0, 3.0, 6.0])


def test_resting_against_the_edge_ahead_follows_a_walled_prompt():
  # Right, then down: walled, the object reaches the right edge, rests, then the bottom one.
  schedule = ((0, "a red circle moves right on a gray background"),
              (24, "a red circle moves down on a gray background"))
  frames, centers = prompts.render_schedule(schedule, 48, RES, RES, walled=True, speed=0.05)
  assert np.ptp(centers[12:24, 0]) == 0 and np.ptp(centers[40:, 1]) == 0  # resting
  walled = sm.evaluate_video(frames, schedule, sm.Settings(walled=True))["metrics"]
  assert walled["following/direction"] == 1.0
  assert sm.evaluate_video(frames, schedule)["metrics"]["following/direction"] < 0.75
  # Resting against the opposite edge does not follow.
  wrong = ((0, "a red circle moves left on a gray background"),
           (24, "a red circle moves up on a gray background"))
  scored = sm.evaluate_video(frames, wrong, sm.Settings(walled=True))["metrics"]
  assert scored["following/direction"] == 0.0
