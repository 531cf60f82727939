"""Tests of the synthetic shapes clips: ground truth, held-out split, captions."""

import itertools

import numpy as np
import pytest

from artv_jax.data import synthetic_shapes as ss


def _object_mask(frames: np.ndarray, color: str) -> np.ndarray:
  """Pixels at least half covered by the object: [T, H, W] bool."""
  rgb = np.asarray(ss.COLORS[color], np.float32)
  distance = np.linalg.norm(frames.astype(np.float32) - rgb, axis=-1)
  # The backgrounds are grey, far (> 150) from every object colour.
  return distance < 75.0


def test_generate_clip_is_a_function_of_seed_split_and_index():
  a = ss.generate_clip(3, "train", 7)
  b = ss.generate_clip(3, "train", 7)
  c = ss.generate_clip(3, "train", 8)
  assert a.spec == b.spec and np.array_equal(a.frames, b.frames)
  assert not np.array_equal(a.frames, c.frames)


def test_clip_shapes():
  clip = ss.generate_clip(0, "train", 0, num_frames=20, height=24, width=40)
  assert clip.frames.shape == (20, 24, 40, 3) and clip.frames.dtype == np.uint8
  assert clip.center_xy.shape == (20, 2) and clip.size.shape == (20,)


def test_split_combinations_partition_all_triples():
  train, heldout = set(ss.TRAIN_COMBINATIONS), set(ss.HELDOUT_COMBINATIONS)
  assert not train & heldout
  assert train | heldout == set(itertools.product(ss.COLORS, ss.SHAPES, ss.MOTIONS))


@pytest.mark.parametrize("split", ss.SPLITS)
def test_split_samples_only_its_triples(split):
  rng = np.random.default_rng(0)
  triples = {(s.color, s.shape, s.motion)
             for s in (ss.sample_spec(rng, split) for _ in range(3000))}
  heldout = set(ss.HELDOUT_COMBINATIONS)
  assert triples <= (heldout if split == "heldout" else set(ss.TRAIN_COMBINATIONS))
  assert triples == set(ss.combinations(split))  # Every triple gets drawn.


def test_heldout_triples_combine_attribute_pairs_seen_in_training():
  train = ss.TRAIN_COMBINATIONS
  for triple in ss.HELDOUT_COMBINATIONS:
    for i, j in itertools.combinations(range(3), 2):
      assert any(t[i] == triple[i] and t[j] == triple[j] for t in train), (triple, i, j)


def test_caption_round_trip():
  for color, shape, motion in itertools.product(ss.COLORS, ss.SHAPES, ss.MOTIONS):
    assert ss.parse_caption(ss.make_caption(color, shape, motion)) == {
        "color": color, "shape": shape, "motion": motion}
    for background in ss.BACKGROUNDS:
      caption = ss.make_caption(color, shape, motion, background)
      assert ss.parse_caption(caption) == {"color": color, "shape": shape,
                                           "motion": motion, "background": background}


def test_all_captions_cover_both_splits():
  captions = set(ss.all_captions())
  for triple in ss.HELDOUT_COMBINATIONS + ss.TRAIN_COMBINATIONS[:3]:
    assert ss.make_caption(*triple) in captions
    assert ss.make_caption(*triple, "white") in captions


@pytest.mark.parametrize("caption", ["a pink circle moves right",
                                     "a red hexagon moves left",
                                     "a red circle moves sideways",
                                     "a red circle spins"])
def test_parse_caption_rejects_unknown_words(caption):
  with pytest.raises(ValueError, match="caption"):
    ss.parse_caption(caption)


def test_clip_spec_rejects_unknown_attribute():
  with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
    ss.ClipSpec(color="red", shape="hexagon", motion="left")


@pytest.mark.parametrize("shape,area_per_size2", [("circle", np.pi), ("square", 4.0),
                                                  ("triangle", 2.0)])
def test_rendered_object_matches_trajectory(shape, area_per_size2):
  spec = ss.ClipSpec(color="blue", shape=shape, motion="bounce", size=0.15,
                     start_xy=(0.4, 0.6), bounce_angle=30.0, speed=0.03)
  frames, path = ss.render_clip(spec, 16, 64, 64)
  # Coverage of each pixel by the object, from its colour between background and
  # object: sub-pixel accurate thanks to the anti-aliased edges.
  background = ss.background_image("gray", 64, 64)
  color = np.asarray(ss.COLORS["blue"], np.float32)
  alpha = ((frames - background) * (color - background)).sum(-1)
  alpha /= ((color - background) ** 2).sum(-1)
  area = alpha.sum(axis=(1, 2))
  np.testing.assert_allclose(area, area_per_size2 * path["size"] ** 2, rtol=0.03)
  ys, xs = np.mgrid[0:64, 0:64] + 0.5
  centroid = np.stack([(alpha * xs).sum((1, 2)), (alpha * ys).sum((1, 2))], -1)
  centroid /= area[:, None]
  # A triangle's centre is its bounding box's, a third of s above its centroid.
  offset = np.array([0.0, 1 / 3]) * path["size"][:, None] if shape == "triangle" else 0
  np.testing.assert_allclose(centroid, path["center_xy"] + offset, atol=0.1)


@pytest.mark.parametrize("motion", ["right", "left", "up", "down"])
def test_directional_motion_moves_by_its_speed_and_wraps(motion):
  spec = ss.ClipSpec(color="red", shape="circle", motion=motion, speed=0.05)
  frames, path = ss.render_clip(spec, 40, 32, 48)  # Travels twice across the frame.
  step = np.diff(path["center_xy"], axis=0)
  extent = np.array([48.0, 32.0])
  step = np.mod(step + extent / 2, extent) - extent / 2  # Undo the wrap.
  vx, vy = ss.velocity_xy(spec)
  np.testing.assert_allclose(step, np.broadcast_to([vx * 48, vy * 32], step.shape),
                             atol=1e-4)
  assert ((path["center_xy"] >= 0) & (path["center_xy"] < extent)).all()
  # Whole at every frame, also when split across an edge.
  area = _object_mask(frames, "red").sum(axis=(1, 2))
  assert area.min() > 0.9 * area.max()


def test_bounce_stays_inside_the_frame():
  spec = ss.ClipSpec(color="green", shape="square", motion="bounce", speed=0.05,
                     bounce_angle=60.0)
  _, path = ss.render_clip(spec, 200, 32, 32)
  size = path["size"][0]
  assert (path["center_xy"] >= size - 1e-4).all()
  assert (path["center_xy"] <= 32 - size + 1e-4).all()
  step = np.diff(path["center_xy"], axis=0)
  assert (step[:, 0] < 0).any() and (step[:, 0] > 0).any()  # It did bounce.


@pytest.mark.parametrize("motion", ["right", "left", "up", "down"])
def test_a_walled_object_stops_whole_at_the_frame_s_edge(motion):
  spec = ss.ClipSpec(color="red", shape="square", motion=motion, speed=0.05, walled=True)
  frames, path = ss.render_clip(spec, 20, 32, 48)
  size = path["size"][0]
  vx, vy = ss.velocity_xy(spec)
  step = np.diff(path["center_xy"], axis=0)
  # Full steps until it touches the edge, then none: it rests against the edge.
  moving = np.abs(step).sum(1) > 1e-4
  assert moving[:3].all() and not moving[-3:].any()
  np.testing.assert_allclose(step[moving], np.broadcast_to(
      [vx * 48, vy * 32], step.shape)[moving], atol=1.6 + 1e-4)  # The last one is cut short.
  edge = {"right": (0, 48 - size), "left": (0, size), "down": (1, 32 - size),
          "up": (1, size)}[motion]
  np.testing.assert_allclose(path["center_xy"][-1, edge[0]], edge[1], atol=1e-4)
  area = _object_mask(frames, "red").sum(axis=(1, 2))
  np.testing.assert_allclose(area, area[0], rtol=0.02)  # Never split across an edge.


def test_walled_clips_turn_every_few_frames_and_stay_whole():
  rng = np.random.default_rng(0)
  specs = [ss.sample_spec(rng, "train", num_frames=24, segment_frames=(4, 12),
                          walled=True) for _ in range(300)]
  for spec in specs:
    frames = [0] + [frame for frame, _ in spec.turns]
    assert all(4 <= b - a <= 12 for a, b in zip(frames, frames[1:]))
    assert 24 - frames[-1] <= 12 or spec.motion == "bounce"
    directions = [spec.motion] + [d for _, d in spec.turns]
    assert all(a != b for a, b in zip(directions, directions[1:]))
    assert all((spec.color, spec.shape, d) in ss.TRAIN_COMBINATIONS for d in directions)
    path = ss.trajectory(spec, 24, 32, 32)
    assert (path["center_xy"] >= path["size"][0] - 1e-4).all()
    assert (path["center_xy"] <= 32 - path["size"][0] + 1e-4).all()
  assert np.mean([len(s.turns) for s in specs if s.motion != "bounce"]) > 2


def test_segment_frames_exclude_a_turn_probability():
  with pytest.raises(ValueError, match="segment_frames"):
    ss.sample_spec(np.random.default_rng(0), "train", turn_probability=0.5,
                   segment_frames=(4, 12))


def test_background_is_static_away_from_the_object():
  spec = ss.ClipSpec(color="red", shape="square", motion="right", size=0.15)
  frames, path = ss.render_clip(spec, 8, 32, 32)
  background = np.round(ss.background_image("gray", 32, 32)).astype(np.uint8)
  ys, xs = np.mgrid[0:32, 0:32] + 0.5
  dx = np.abs(xs - path["center_xy"][:, 0, None, None])
  dy = np.abs(ys - path["center_xy"][:, 1, None, None])
  dx = np.minimum(dx, 32 - dx)  # The frame wraps around.
  far = np.maximum(dx, dy) > path["size"][:, None, None] + 1.0  # [T, H, W]
  assert far.mean() > 0.5
  np.testing.assert_array_equal(frames[far], np.broadcast_to(background, frames.shape)[far])


def test_a_turning_object_moves_the_new_way_from_its_turn_frame():
  spec = ss.ClipSpec(color="red", shape="circle", motion="right",
                                   start_xy=(0.5, 0.5), speed=0.05, turns=((4, "down"),))
  path = ss.trajectory(spec, 8, 40, 40)["center_xy"]
  steps = np.diff(path, axis=0)  # steps[i]: frame i -> i + 1
  np.testing.assert_allclose(steps[:3], [[2.0, 0.0]] * 3, atol=1e-4)
  np.testing.assert_allclose(steps[3:], [[0.0, 2.0]] * 4, atol=1e-4)
  assert spec.schedule == ((0, "a red circle moves right on a gray background"),
                           (4, "a red circle moves down on a gray background"))


def test_turns_stay_within_the_split_s_triples():
  rng = np.random.default_rng(0)
  specs = [ss.sample_spec(rng, "train", num_frames=24, turn_probability=1.0)
           for _ in range(300)]
  turned = [s for s in specs if s.turns]
  assert len(turned) > 200
  for spec in turned:
    (frame, direction), = spec.turns
    assert 6 <= frame <= 18 and direction != spec.motion
    assert (spec.color, spec.shape, direction) in ss.TRAIN_COMBINATIONS


@pytest.mark.parametrize("turns", [((0, "down"),), ((5, "down"), (3, "up")), ((4, "bounce"),)])
def test_clip_spec_rejects_bad_turns(turns):
  with pytest.raises(ValueError, match="turn"):
    ss.ClipSpec(color="red", shape="circle", motion="right", turns=turns)


def test_a_bouncing_object_cannot_turn():
  with pytest.raises(ValueError, match="bouncing"):
    ss.ClipSpec(color="red", shape="circle", motion="bounce",
                              turns=((4, "down"),))


def test_sample_spec_draws_from_the_given_distribution():
  rng = np.random.default_rng(0)
  specs = [ss.sample_spec(rng, "train", size_range=(0.2, 0.25), speed_range=(0.0625, 0.0625),
                          backgrounds=("gray",)) for _ in range(200)]
  assert all(0.2 <= s.size <= 0.25 for s in specs)
  assert {s.speed for s in specs} == {0.0625}
  assert {s.background for s in specs} == {"gray"}


def test_sample_spec_defaults_draw_the_standard_clips():
  default = ss.sample_spec(np.random.default_rng(3), "train", turn_probability=0.5)
  explicit = ss.sample_spec(np.random.default_rng(3), "train", turn_probability=0.5,
                            size_range=ss.SIZE_RANGE, speed_range=ss.SPEED_RANGE,
                            backgrounds=tuple(ss.BACKGROUNDS))
  assert default == explicit


@pytest.mark.parametrize("bad, match", [
    (dict(backgrounds=("purple",)), "backgrounds"),
    (dict(backgrounds=()), "backgrounds"),
    (dict(size_range=(0.3, 0.2)), "size_range"),
    (dict(speed_range=(0.0, 0.1)), "speed_range"),
])
def test_sample_spec_rejects_a_bad_distribution(bad, match):
  with pytest.raises(ValueError, match=match):
    ss.sample_spec(np.random.default_rng(0), "train", **bad)
