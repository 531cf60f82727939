"""Tests of the held-out evaluation prompts and their ground-truth rendering."""

import numpy as np
import pytest

from artv_jax.data import synthetic_shapes as ss
from artv_jax.eval import prompts


def test_schedules_open_on_every_heldout_triple_once():
  schedules = prompts.heldout_schedules(num_frames=256, num_segments=4)
  assert schedules == prompts.heldout_schedules(num_frames=256, num_segments=4)
  first = [prompts.segments(s, 256)[0] for s in schedules]
  assert sorted((p.color, p.shape, p.motion) for p in first) == sorted(ss.HELDOUT_COMBINATIONS)


def test_schedules_switch_motion_of_the_same_object_at_equal_intervals():
  for schedule in prompts.heldout_schedules(num_frames=256, num_segments=4):
    parts = prompts.segments(schedule, 256)
    assert [p.start for p in parts] == [0, 64, 128, 192]
    assert len({(p.color, p.shape, p.background) for p in parts}) == 1
    for before, after in zip(parts, parts[1:]):
      assert after.motion != before.motion and after.motion != "bounce"


def test_one_segment_gives_single_prompt_videos():
  schedules = prompts.heldout_schedules(num_frames=64, num_segments=1)
  assert all(len(s) == 1 and s[0][0] == 0 for s in schedules)


def test_segments_drop_prompts_after_the_video():
  schedule = ((0, "a red circle moves up"), (8, "a red circle moves left"))
  parts = prompts.segments(schedule, 8)
  assert len(parts) == 1 and (parts[0].end, parts[0].background) == (8, "gray")


def test_rendered_schedule_steps_with_the_active_prompt():
  schedule = ((0, "a red circle moves right"), (10, "a red circle moves up"))
  frames, centers = prompts.render_schedule(schedule, 20, 32, 32, speed=0.05)
  assert frames.shape == (20, 32, 32, 3)
  steps = np.mod(np.diff(centers, axis=0) + 16, 32) - 16  # [19, 2] frame t-1 -> t
  np.testing.assert_allclose(steps[:9], [[1.6, 0.0]] * 9, atol=1e-4)
  np.testing.assert_allclose(steps[9:], [[0.0, -1.6]] * 10, atol=1e-4)


def test_switch_into_bounce_across_the_edge_is_refused():
  schedule = ((0, "a red circle moves right"), (10, "a red circle bounces around"))
  with pytest.raises(ValueError, match="bounce"):
    prompts.render_schedule(schedule, 20, 32, 32, start_xy=(0.6, 0.5))


def test_heldout_schedules_take_the_given_backgrounds():
  for schedule in prompts.heldout_schedules(num_frames=64, num_segments=2,
                                            backgrounds=("gray",)):
    assert {ss.parse_caption(c)["background"] for _, c in schedule} == {"gray"}
