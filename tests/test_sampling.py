"""The scan auto-regressive sampler: agreement with a Python loop, flat cost, prompts, resume."""
import bisect
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from artv_jax import sampling, video_writer
from artv_jax.diffusion.guidance import dual_cfg
from artv_jax.diffusion.masked_loss import masked_prediction
from artv_jax.diffusion.schedule import alpha_sigma, make_schedule
from artv_jax.models.artv import ARTV, artv_unet
from artv_jax.models.unet import UNet2DConditionModel
from tests import reference_sampler

LATENT = (8, 8, 3)  # pixel-space latents, as in the demo
TEXT_LEN, TEXT_DIM = 4, 16
CHUNK = 16
# Shared by most tests, so that they share one compiled sampler.
SETTINGS = sampling.SamplerSettings(num_steps=2, eta=0.5, text_scale=2.0, ref_scale=1.5,
                                    ref_noise_level=50, reset_anchor_on_prompt_change=True)
PROMPTS = ((0, "a red ball rolls right"), (7, "the ball bounces up"))



def tiny_model() -> tuple[ARTV, dict]:
  """A two-level ART·V UNet on 8x8x3 latents with two references, every parameter random
  (unlike init_artv_params: the adapter outputs are not zero, so the references and the
  anchor matter, and the mask is not constant)."""
  unet = UNet2DConditionModel.from_config(dict(
      block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
      cross_attention_dim=TEXT_DIM, attention_head_dim=2,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), in_channels=3, out_channels=3))
  model = ARTV(unet=artv_unet(unet, num_ref_frames=2, use_anchor=True, use_mask=True,
                              reference_pathway="adapter"),
               latent_channels=3, num_ref_frames=2)
  h, w, c = LATENT
  inputs = (jnp.zeros((1, h, w, c)), jnp.zeros((1,), jnp.int32),
            jnp.zeros((1, TEXT_LEN, TEXT_DIM)), jnp.zeros((1, 2, h, w, c)),
            jnp.zeros((1, h, w, c)), jnp.zeros((1,), jnp.int32), jnp.ones((1,), bool))
  # Shapes only, filled from numpy: compiling ``model.init`` costs more CPU than all the tests.
  shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    name = path[-1].key
    if name == "kernel":  # variance 1 / fan_in
      return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])))
    return jnp.asarray((name == "scale") + 0.05 * noise)  # norm scales near 1, biases near 0

  return model, jax.tree_util.tree_map_with_path(fill, shapes)


def random_text_encoder(prompts: list[str]) -> jax.Array:
  """Stands in for CLIP: a fixed random [S, D] per distinct string, zeros for ''."""
  return jnp.stack([jnp.zeros((TEXT_LEN, TEXT_DIM)) if not p else
                    jax.random.normal(jax.random.key(sum(map(ord, p))), (TEXT_LEN, TEXT_DIM))
                    for p in prompts])


def sample_config(num_frames: int, settings: sampling.SamplerSettings = SETTINGS,
                  prompts=PROMPTS) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      num_frames=num_frames, num_steps=settings.num_steps, sampler=settings.sampler,
      eta=settings.eta, text_scale=settings.text_scale, ref_scale=settings.ref_scale,
      ref_noise_level=settings.ref_noise_level, chunk_frames=CHUNK,
      reset_anchor_on_prompt_change=settings.reset_anchor_on_prompt_change,
      clip_x0=settings.clip_x0, prompts=prompts, prompts_text="", fps=8, upscale=1,
      timestep_spacing=settings.timestep_spacing, contact_sheet_every=0))


def scan_video(model, params, schedule, settings, table, carry, num_frames):
  """Latents of frames carry.frame .. num_frames − 1 via sample_chunk, chunk by chunk."""
  latents = []
  start = int(carry.frame)
  while int(carry.frame) < num_frames:
    carry, chunk, _ = sampling.sample_chunk(model, params, schedule, settings, table, carry,
                                            jnp.int32(num_frames), num_frames=CHUNK)
    latents.append(chunk)
  return jnp.concatenate(latents)[:num_frames - start], carry


def assert_close_to_video(actual, expected):
  """Equal up to float32 rounding at the scale of the video (a random model's latents reach
  tens: x̂0 = (x_t − σ ε̂) / α amplifies its errors at high noise)."""
  scale = float(np.abs(expected).max())
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def read_mp4(path: str) -> np.ndarray:
  return np.stack(video_writer.read_every_nth_frame(path, 1)[1])


def tiny_sampler():
  """(model, params, schedule, prompt table) of a tiny pixel-space ART·V."""
  model, params = tiny_model()
  table = sampling.encode_prompts(random_text_encoder, PROMPTS)
  return model, params, make_schedule(), table


@pytest.fixture(scope="module")
def tiny():
  return tiny_sampler()


def test_three_branches_in_one_call_equal_separate_calls(tiny):
  model, params, schedule, table = tiny
  rngs = jax.random.split(jax.random.key(2), 4)
  refs = jax.random.normal(rngs[0], (2,) + LATENT)
  anchor = jax.random.normal(rngs[1], LATENT)
  x_t = jax.random.normal(rngs[2], LATENT)
  t = jnp.int32(500)
  inputs = sampling.frame_inputs(schedule, SETTINGS, table.text[1], table.null_text, refs,
                                 anchor, jnp.asarray(False), rngs[3])

  def branch(b):
    output, mask = model.apply(
        {"params": params}, x_t[None], t[None], inputs.text[b:b + 1], inputs.refs[b:b + 1],
        inputs.anchor[b:b + 1], inputs.ref_noise_level[b:b + 1], inputs.keep_refs[b:b + 1])
    return masked_prediction(schedule, output, mask, x_t[None], refs[:1], t[None],
                             "epsilon")[0]

  @jax.jit
  def batched_and_separate():
    guided, _ = sampling.guided_prediction(model, params, schedule, SETTINGS, inputs, x_t, t)
    return guided, dual_cfg(branch(0), branch(1), branch(2), SETTINGS.ref_scale,
                            SETTINGS.text_scale)

  guided, expected = batched_and_separate()
  assert_close_to_video(guided, expected)


@pytest.mark.parametrize("text_to_image", [False, True])
def test_unit_ref_scale_skips_the_unconditional_branch(tiny, text_to_image):
  """With s_ref = 1 two branches give the three-branch dual guidance."""
  model, params, schedule, table = tiny
  rngs = jax.random.split(jax.random.key(5), 4)
  refs = jax.random.normal(rngs[0], (2,) + LATENT)
  anchor = jax.random.normal(rngs[1], LATENT)
  x_t = jax.random.normal(rngs[2], LATENT)
  two = dataclasses.replace(SETTINGS, ref_scale=1.0)
  three = dataclasses.replace(SETTINGS, ref_scale=1.0 + 1e-9)  # == 1 in float32, not in Python
  assert two.branches == (1, 2) and three.branches == (0, 1, 2)

  def guided(settings):
    inputs = sampling.frame_inputs(schedule, settings, table.text[1], table.null_text, refs,
                                   anchor, jnp.asarray(text_to_image), rngs[3])
    assert inputs.text.shape[0] == len(settings.branches)
    return sampling.guided_prediction(model, params, schedule, settings, inputs, x_t,
                                      jnp.int32(500))

  (pred_two, mask_two), (pred_three, mask_three) = guided(two), guided(three)
  assert_close_to_video(pred_two, pred_three)
  assert_close_to_video(mask_two, mask_three)


@pytest.mark.parametrize("mode, num_given", [("text_to_video", 0), ("image_to_video", 1),
                                             ("continuation", 3)])
def test_scan_sampler_equals_python_loop(tiny, mode, num_given):
  """Two chunks (the second padded), two prompts with an anchor reset, two references."""
  del mode  # in the test id
  model, params, schedule, table = tiny
  num_frames, rng = 20, jax.random.key(3)
  given = None
  if num_given:
    given = jax.random.normal(jax.random.key(4), (num_given,) + LATENT)
    carry = sampling.carry_from_latents(given, model.num_ref_frames, rng)
  else:
    carry = sampling.initial_carry(LATENT, model.num_ref_frames, rng)
  scanned, carry = scan_video(model, params, schedule, SETTINGS, table, carry, num_frames)
  expected = reference_sampler.sample_reference(model, params, schedule, SETTINGS, table, rng,
                                       num_frames, LATENT, given)
  assert int(carry.frame) == num_frames
  assert_close_to_video(scanned, expected[num_given:])
  # The carry's references are the last two frames, nearest first.
  assert_close_to_video(carry.refs, expected[::-1][:2])


def test_several_videos_at_once_equal_each_alone(tiny):
  """Two seeds in one program: each video is the one sample_chunk makes; frames past the end
  of the video are skipped (zeros) for all of them."""
  model, params, schedule, table = tiny
  keys = jax.random.split(jax.random.key(8), 2)
  carries = jax.vmap(lambda k: sampling.initial_carry(LATENT, model.num_ref_frames, k))(keys)
  num_frames = 5
  out, latents, _ = sampling.sample_chunks(model, params, schedule, SETTINGS, table, carries,
                                           jnp.int32(num_frames), num_frames=CHUNK)
  assert latents.shape == (2, CHUNK) + LATENT
  np.testing.assert_array_equal(out.frame, [num_frames, num_frames])
  assert not np.asarray(latents[:, num_frames:]).any()
  for v, key in enumerate(keys):
    alone, _ = scan_video(model, params, schedule, SETTINGS, table,
                          sampling.initial_carry(LATENT, model.num_ref_frames, key), num_frames)
    assert_close_to_video(latents[v, :num_frames], alone)


def test_dpm_solver_scan_equals_python_loop(tiny):
  model, params, schedule, table = tiny
  settings = sampling.SamplerSettings(num_steps=3, sampler="dpm_solver", text_scale=2.0,
                                      ref_scale=1.5)
  rng = jax.random.key(5)
  carry = sampling.initial_carry(LATENT, model.num_ref_frames, rng)
  scanned, _ = scan_video(model, params, schedule, settings, table, carry, 5)
  expected = reference_sampler.sample_reference(model, params, schedule, settings, table, rng, 5,
                                       LATENT)
  assert_close_to_video(scanned, expected)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_a_frame_ends_at_the_clipped_x0_prediction_of_its_last_step(tiny, sampler):
  """Not at DDIM's x at ᾱ_0 < 1, whose leftover noise the next frame would copy."""
  model, params, schedule, table = tiny
  settings = dataclasses.replace(SETTINGS, sampler=sampler, eta=0.0, clip_x0=True)
  rngs = jax.random.split(jax.random.key(6), 3)
  refs = jax.random.normal(rngs[0], (2,) + LATENT)
  inputs = sampling.frame_inputs(schedule, settings, table.text[0], table.null_text, refs,
                                 refs[0], jnp.asarray(False), rngs[1])
  x_t, t = jax.random.normal(rngs[2], LATENT), jnp.int32(49)
  x, _, _ = sampling.denoise_step(model, params, schedule, settings, inputs, x_t,
                                  sampling.solver_init(settings, x_t), t, jnp.int32(-1), rngs[0])
  pred, _ = sampling.guided_prediction(model, params, schedule, settings, inputs, x_t, t)
  alpha, sigma = alpha_sigma(schedule, t)
  x0 = (x_t - sigma * pred) / alpha
  assert float(jnp.abs(x0).max()) > 1  # so the clip is tested
  np.testing.assert_allclose(x, jnp.clip(x0, -1, 1), atol=1e-5)


class CompileCounter:
  """Counts XLA compilations of sample_chunk while active."""

  def __init__(self):
    self.count = 0

  def __call__(self, event, duration, **kwargs):
    del duration
    if (event == "/jax/core/compile/backend_compile_duration"
        and "sample_chunk" in kwargs.get("fun_name", "")):
      self.count += 1

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)


def test_compilations_do_not_grow_with_video_length(tiny):
  model, params, schedule, table = tiny
  carry = sampling.initial_carry(LATENT, model.num_ref_frames, jax.random.key(6))

  def compilations(num_frames, settings):
    with CompileCounter() as counter:
      scan_video(model, params, schedule, settings, table, carry, num_frames)
    return counter.count

  # Settings no other test uses, so that each video starts from an empty compilation cache.
  settings = sampling.SamplerSettings(num_steps=1, text_scale=3.0)
  assert compilations(16, settings) == compilations(
      256, dataclasses.replace(settings, text_scale=3.5)) == 1

  # Not unrolled: the program for a chunk of 256 frames is the one for 16 but for its length.
  def program_size(chunk_frames):
    return len(sampling.sample_chunk.lower(
        model, params, schedule, settings, table, carry, jnp.int32(chunk_frames),
        num_frames=chunk_frames).as_text())

  assert abs(program_size(16) - program_size(256)) < 100


def test_prompt_index_picks_the_range_holding_each_frame():
  starts = [0, 5, 6, 40]
  frames = jnp.arange(64)
  index = jax.vmap(lambda i: sampling.prompt_index(jnp.asarray(starts), i))(frames)
  np.testing.assert_array_equal(index, [bisect.bisect_right(starts, i) - 1 for i in range(64)])


class TextEcho(nn.Module):
  """Predicts the ε whose x̂0 is the first entry of the text states, everywhere (M ≡ 1)."""
  num_ref_frames: int = 1

  @nn.compact
  def __call__(self, x_t, t, text, refs, anchor, ref_noise_level, keep_refs):
    alpha, sigma = alpha_sigma(make_schedule(set_alpha_to_one=True), t)
    x0 = text[:, 0, 0][:, None, None, None]
    eps = (x_t - alpha[:, None, None, None] * x0) / sigma[:, None, None, None]
    return eps, jnp.ones(x_t.shape[:3] + (1,))


def test_each_frame_uses_the_prompt_whose_range_holds_it():
  starts = [0, 5, 13]
  # Prompt p's states are all p + 1, the empty prompt's 0; text_scale 1 makes x̂0 = p + 1.
  table = sampling.PromptTable(text=jnp.arange(1.0, 4.0)[:, None, None] * jnp.ones((3, 2, 4)),
                               null_text=jnp.zeros((2, 4)), starts=jnp.asarray(starts))
  settings = sampling.SamplerSettings(num_steps=3, text_scale=1.0, ref_scale=1.0)
  schedule = make_schedule(set_alpha_to_one=True)
  carry = sampling.initial_carry(LATENT, 1, jax.random.key(7))
  latents, _ = scan_video(TextEcho(), {}, schedule, settings, table, carry, 20)
  used = np.round(np.asarray(latents).mean(axis=(1, 2, 3))) - 1
  np.testing.assert_array_equal(used, [bisect.bisect_right(starts, i) - 1 for i in range(20)])


def test_prompts_text_gives_the_schedule_from_the_command_line():
  sample = ml_collections.ConfigDict(dict(prompts=PROMPTS, prompts_text=""))
  assert sampling.prompt_schedule(sample) == PROMPTS
  sample.prompts_text = "a red circle moves up"
  assert sampling.prompt_schedule(sample) == ((0, "a red circle moves up"),)
  sample.prompts_text = "0: a red circle moves up; 8:a red circle moves left"
  assert sampling.prompt_schedule(sample) == ((0, "a red circle moves up"),
                                              (8, "a red circle moves left"))
  sample.prompts_text = "0:a red circle;later:a blue one"
  with pytest.raises(ValueError, match="'later:a blue one' is not FRAME:PROMPT"):
    sampling.prompt_schedule(sample)
