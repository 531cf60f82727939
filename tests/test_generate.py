"""The sampling driver: chunks written as they come, resume, branches, run folders, memory."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from artv_jax import generate, sampling
from artv_jax.models.vae import AutoencoderKL
from tests.test_sampling import (LATENT, PROMPTS, SETTINGS, random_text_encoder,
                                 read_mp4, sample_config, scan_video, tiny_sampler)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny():
  return tiny_sampler()

def test_resumed_carry_continues_the_same_video(tiny, tmp_path):
  model, params, schedule, table = tiny
  carry = sampling.initial_carry(LATENT, model.num_ref_frames, jax.random.key(8))
  whole, _ = scan_video(model, params, schedule, SETTINGS, table, carry, 64)
  first, carry = scan_video(model, params, schedule, SETTINGS, table, carry, 32)
  path = str(tmp_path / "resume.npz")
  generate.save_carry(path, generate.host_carry(carry), "settings")
  rest, _ = scan_video(model, params, schedule, SETTINGS, table,
                       generate.load_carry(path, "settings"), 64)
  np.testing.assert_array_equal(jnp.concatenate([first, rest]), whole)


def make_video(tiny, out_dir, num_frames, **kwargs):
  model, params, schedule, _ = tiny
  return generate.generate_video(
      model, params, schedule, sample_config(num_frames), str(out_dir),
      encode_text=random_text_encoder, codec=generate.latent_codec(None),
      latent_shape=LATENT, seed=9, progress=False, **kwargs)


def test_generate_video_stopped_and_resumed_equals_one_run(tiny, tmp_path):
  whole = make_video(tiny, tmp_path / "whole", 64)
  part = make_video(tiny, tmp_path / "parts", 64, max_chunks=2)
  assert (part.num_frames, part.complete) == (32, False)
  resumed = make_video(tiny, tmp_path / "parts", 64)
  assert (resumed.num_frames, resumed.complete) == (64, True)
  frames = read_mp4(whole.video)
  assert frames.shape == (64, 8, 8, 3)
  np.testing.assert_array_equal(read_mp4(resumed.video), frames)
  with open(resumed.json) as f:
    info = json.load(f)
  assert info["prompts"] == [list(p) for p in PROMPTS]
  assert info["sampler"]["text_scale"] == SETTINGS.text_scale and info["complete"]


def test_generate_video_refuses_to_resume_other_settings(tiny, tmp_path):
  make_video(tiny, tmp_path, 20, max_chunks=1)
  model, params, schedule, _ = tiny
  config = sample_config(20, prompts=((0, "a blue square"),))
  with pytest.raises(ValueError, match="00000016.npz belongs to a video generated with other"):
    generate.generate_video(model, params, schedule, config, str(tmp_path),
                            encode_text=random_text_encoder, codec=generate.latent_codec(None),
                            latent_shape=LATENT, seed=9, progress=False)


def test_generate_video_from_an_image_starts_with_it(tiny, tmp_path):
  image = np.zeros((1, 8, 8, 3), np.uint8)
  image[..., 0] = 255  # red
  chunks = []
  result = make_video(tiny, tmp_path, 20, given_frames=image,
                    on_frames=lambda first, frames: chunks.append((first, frames)))
  frames = read_mp4(result.video)
  assert frames.shape == (20, 8, 8, 3)
  np.testing.assert_allclose(frames[0].mean(axis=(0, 1)), [255, 0, 0], atol=20)
  # on_frames gets the generated chunks (not the given image), before the video encoding.
  assert [(first, f.shape, f.dtype) for first, f in chunks] == [
      (1, (16, 8, 8, 3), np.uint8), (17, (3, 8, 8, 3), np.uint8)]


def test_vae_codec_decodes_scaled_latents_frame_by_frame():
  vae = AutoencoderKL.from_config(dict(block_out_channels=(8, 16), layers_per_block=1,
                                       norm_num_groups=4, latent_channels=4))
  shapes = jax.eval_shape(vae.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype),
                        shapes)
  codec = generate.latent_codec(vae, params, batch_size=2)
  frames = jnp.asarray(rng.uniform(-1, 1, (3, 8, 8, 3)), jnp.float32)
  latents = codec.encode(frames)  # 3 frames in batches of 2: a remainder batch too
  posterior = vae.apply({"params": params}, frames, method="encode")
  np.testing.assert_allclose(latents, posterior.mode() * vae.scaling_factor, atol=1e-5)
  decoded = vae.apply({"params": params}, latents / vae.scaling_factor, method="decode")
  np.testing.assert_allclose(codec.decode(latents), decoded, atol=1e-5)


_MEMORY_SCRIPT = """
import os, sys, jax
from artv_jax import generate, sampling
from tests import test_sampling as t
model, params = t.tiny_model()
# Decoded frames of 256x256: a leak of frames would show.
codec = generate.LatentCodec(None, jax.jit(lambda z: z.repeat(32, axis=1).repeat(32, axis=2)))

def peak_rss_kib(num_frames):
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak resident set size (VmHWM) to the current one
  generate.generate_video(model, params, t.make_schedule(),
                          t.sample_config(num_frames, sampling.SamplerSettings(num_steps=1)),
                          os.path.join(sys.argv[1], str(num_frames)),
                          encode_text=t.random_text_encoder, codec=codec,
                          latent_shape=t.LATENT, progress=False)
  return next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM"))

peak_rss_kib(16)  # compiles everything: that leaves hundreds of MB behind
print(peak_rss_kib(64), peak_rss_kib(512))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux procfs")
def test_peak_host_memory_is_flat_in_video_length(tmp_path):
  # In a fresh process, so that other tests' compiled programs do not count; with few malloc
  # arenas, so that the threads' allocation patterns do not add tens of MB of noise.
  out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path)], cwd=REPO,
                       env=dict(os.environ, MALLOC_ARENA_MAX="2"), capture_output=True,
                       text=True, check=True)
  short, long = map(int, out.stdout.split()[-2:])
  assert long <= 1.10 * short, (short, long)


def test_a_branch_repeats_its_source_up_to_the_boundary_then_follows_its_prompts(tiny, tmp_path):
  source = make_video(tiny, tmp_path / "source", 48)
  model, params, schedule, _ = tiny
  config = sample_config(48, prompts=((0, "a blue square"),))
  branch = generate.generate_video(
      model, params, schedule, config, tmp_path / "branch", encode_text=random_text_encoder,
      codec=generate.latent_codec(None), latent_shape=LATENT, seed=9, progress=False,
      branch_from=(tmp_path / "source", 16))
  original, branched = read_mp4(source.video), read_mp4(branch.video)
  assert branched.shape == original.shape == (48, 8, 8, 3)
  np.testing.assert_array_equal(branched[:16], original[:16])
  assert np.abs(branched[16:].astype(int) - original[16:]).mean() > 1
  assert json.loads(open(branch.json).read())["branch_from"].endswith("source@16")


def test_a_branch_point_must_be_a_saved_chunk_boundary(tiny, tmp_path):
  make_video(tiny, tmp_path / "000", 32)
  assert generate.parse_branch("000@16", tmp_path) == (tmp_path / "000", 16)
  with pytest.raises(ValueError, match="no carry at frame 10.*16, 32"):
    generate.parse_branch("000@10", tmp_path)
  with pytest.raises(ValueError, match="is not RUN@FRAME"):
    generate.parse_branch("000", tmp_path)


def _sample(**fields):
  return ml_collections.ConfigDict(dict(dict(run_name="", resume=False), **fields))


def test_runs_are_numbered_named_or_resumed(tmp_path):
  assert generate.run_folder(_sample(), tmp_path).name == "000"
  (tmp_path / "000" / generate.CARRY_DIR).mkdir(parents=True)
  (tmp_path / "000" / generate.CARRY_DIR / "00000016.npz").write_bytes(b"")
  assert generate.run_folder(_sample(), tmp_path).name == "001"
  assert generate.run_folder(_sample(resume=True), tmp_path).name == "000"
  assert generate.run_folder(_sample(run_name="mine"), tmp_path).name == "mine"
  with pytest.raises(ValueError, match="000 exists.*resume=True"):
    generate.run_folder(_sample(run_name="000"), tmp_path)
  assert generate.run_folder(_sample(run_name="000", resume=True), tmp_path).name == "000"
