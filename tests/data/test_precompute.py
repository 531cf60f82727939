"""Tests of pre-encoding (python -m artv_jax.data.precompute) and training on its output."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from artv_jax.checkpoints import pretrained
from artv_jax.data import pipeline
from artv_jax.data import precompute
from artv_jax.data import synthetic_shapes
from artv_jax.data import tfds_synthetic
from artv_jax.data import word_tokenizer
from artv_jax.build import tokenize
from tests.data import records
from tests.data import test_tfds_webvid

RESOLUTION = 8
K = 2  # Reference frames.
BATCH_FRAMES = 20  # Does not divide the 24 frames of a clip: batches span clips.
MAX_LENGTH = 16  # Tokens per caption.

_CONFIGS = {
    "vae": {"_class_name": "AutoencoderKL", "block_out_channels": [8, 16],
            "layers_per_block": 1, "norm_num_groups": 4, "latent_channels": 4},
    "text_encoder": {"model_type": "clip_text_model", "hidden_size": 16,
                     "intermediate_size": 32, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": MAX_LENGTH},
    "unet": {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
             "attention_head_dim": 2, "cross_attention_dim": 16},
    "scheduler": {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000},
}


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
  """A tiny converted SD with random weights, as `artv_jax.convert` would write it."""
  directory = tmp_path_factory.mktemp("sd")
  tokenizer_dir = directory / "tokenizer_files"
  word_tokenizer.write_word_tokenizer(synthetic_shapes.all_captions(), tokenizer_dir,
                                      max_length=MAX_LENGTH)
  vocab_size = len(pretrained.load_tokenizer(tokenizer_dir))
  configs = {**_CONFIGS, "text_encoder": {**_CONFIGS["text_encoder"], "vocab_size": vocab_size}}
  shapes, treedef = jax.tree.flatten(
      pretrained.abstract_params(pretrained.build_networks(configs)))
  keys = jax.random.split(jax.random.key(0), len(shapes))
  params = treedef.unflatten(
      [0.2 * jax.random.normal(key, s.shape) for key, s in zip(keys, shapes)])
  pretrained.save_pretrained(directory / "converted", params, configs, tokenizer_dir)
  return directory / "converted"


@pytest.fixture(scope="module")
def model(sd):
  return pretrained.load_pretrained(sd)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def source(data_dir):
  """A tiny synthetic data set, prepared where `make_builder(resolution=8)` reuses it."""
  tfds.disable_progress_bar()
  config = tfds_synthetic.SyntheticShapesConfig(
      name=f"{RESOLUTION}px", height=RESOLUTION, width=RESOLUTION, num_train=5,
      num_heldout=2)
  builder = tfds_synthetic.ArtvSyntheticShapes(data_dir=data_dir, config=config)
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope="module")
def out(tmp_path_factory):
  return tmp_path_factory.mktemp("encoded")


@pytest.fixture(scope="module")
def command(sd, source, data_dir, out):
  """The precompute command line, encoding `source` in float32 into `out`."""
  del source  # Prepared first, so the command reuses it.
  return ["--dataset=synthetic_shapes", f"--data_dir={data_dir}",
          f"--resolution={RESOLUTION}", f"--pretrained={sd}", f"--out={out}",
          "--dtype=float32", f"--batch_frames={BATCH_FRAMES}"]


@pytest.fixture(scope="module")
def encoded(command, out):
  assert precompute.main(command) == 0
  return precompute.load_encoded(out)


def _encode_each_clip(model, source):
  """{source id: (moments [T, h, w, 2C], text states [S, L, D] of its S prompts)}."""
  result = {}
  for split in source.info.splits:
    for source_id, clip in _records(source, split).items():
      images = jnp.asarray(clip["frames"], jnp.float32) / 127.5 - 1.0
      posterior = model.vae.apply({"params": model.params["vae"]}, images, method="encode")
      moments = np.concatenate([posterior.mean, posterior.logvar], axis=-1)
      ids = tokenize(model.tokenizer, clip["prompts"] if "prompts" in clip else [clip["caption"]])
      text = model.text_encoder.apply({"params": model.params["text_encoder"]}, ids)
      result[source_id] = (moments, np.asarray(text))
  return result


@pytest.fixture(scope="module")
def expected(model, source):
  return _encode_each_clip(model, source)


def _records(builder, split):
  """{"{split}[{index}]": example} of a split, decoded, in record order."""
  return {f"{split}[{i}]": ex for i, ex in enumerate(records.decoded(builder, split))}


def _examples(builder):
  """{split: {source id: example}}, decoded."""
  return {split: {ex["source_id"].decode(): ex for ex in _records(builder, split).values()}
          for split in builder.info.splits}


def test_same_splits_and_clips_as_the_source(encoded, source):
  sources = {split: {i: ex["caption"] for i, ex in _records(source, split).items()}
             for split in source.info.splits}
  examples = _examples(encoded)
  assert set(examples) == {"train", "heldout"}
  for split, clips in examples.items():
    assert {i: ex["caption"] for i, ex in clips.items()} == sources[split]


def test_moments_are_the_vae_posterior_of_every_frame(encoded, expected):
  for clips in _examples(encoded).values():
    for source_id, ex in clips.items():
      assert ex["moments"].shape == (24, 4, 4, 8) and ex["moments"].dtype == np.float32
      np.testing.assert_allclose(ex["moments"], expected[source_id][0], rtol=1e-5, atol=1e-5)


def test_text_states_are_the_text_encoder_output(encoded, expected):
  for clips in _examples(encoded).values():
    for source_id, ex in clips.items():
      np.testing.assert_allclose(ex["text_states"], expected[source_id][1], rtol=1e-5,
                                 atol=1e-5)


def test_each_prompt_of_a_clip_that_turns_is_encoded(encoded):
  examples = list(_examples(encoded)["train"].values())
  assert any(len(ex["prompts"]) == 2 for ex in examples)  # The source has clips that turn.
  for ex in examples:
    assert len(ex["text_states"]) == len(ex["prompts"]) == len(ex["prompt_starts"])
    assert ex["prompts"][0] == ex["caption"] and ex["prompt_starts"][0] == 0


def test_metadata_records_the_vae_scaling(encoded, model, sd, source):
  metadata = encoded.info.metadata
  assert metadata["scaling_factor"] == model.vae.scaling_factor
  assert metadata["pretrained"] == str(sd)
  assert metadata["source"] == source.info.full_name


def _iterator(builder, **overrides):
  kwargs = dict(global_batch_size=4, num_reference_frames=K, min_stride=1, max_stride=3,
                seed=0, process_index=0, process_count=1)
  return pipeline.make_train_iterator(builder, **{**kwargs, **overrides})


def _check_pairing(batch, encoded, expected):
  """Each tuple holds the stored encoding of its clip's target, reference, anchor frames."""
  clips = list(_records(encoded, "train").values())
  for i, clip_index in enumerate(batch["clip_index"]):
    clip = clips[clip_index]
    moments, text = expected[clip["source_id"].decode()]
    target, stride = batch["target_index"][i], batch["stride"][i]
    np.testing.assert_array_equal(batch["ref_indices"][i], target - stride * np.arange(1, K + 1))
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch["target_moments"][i], moments[target], **tol)
    np.testing.assert_allclose(batch["refs_moments"][i], moments[batch["ref_indices"][i]], **tol)
    np.testing.assert_allclose(batch["anchor_moments"][i], moments[batch["anchor_index"][i]],
                               **tol)
    starts = clip["prompt_starts"]
    segment = np.searchsorted(starts, target, side="right") - 1
    np.testing.assert_allclose(batch["text_states"][i], text[segment], **tol)


def test_pipeline_yields_paired_latent_tuples(encoded, expected):
  batch = next(_iterator(encoded))
  assert "target" not in batch and "refs" not in batch
  assert batch["target_moments"].shape == (4, 4, 4, 8)
  assert batch["refs_moments"].shape == (4, K, 4, 4, 8)
  assert batch["anchor_moments"].shape == (4, 4, 4, 8)
  assert batch["text_states"].shape == (4, MAX_LENGTH, 16)
  assert batch["text_states"].dtype == np.float32
  _check_pairing(batch, encoded, expected)


def test_clips_of_varying_length_keep_their_frames(model, tmp_path):
  """WebVid clips (a `Video` feature, 7 to 12 frames) encode to moments of their length."""
  manual_dir = os.fspath(tmp_path / "manual")
  test_tfds_webvid.write_webvid_manual_dir(manual_dir, lengths=(7, 9, 12))
  source = test_tfds_webvid.build(tmp_path / "tfds", manual_dir)
  encoded = precompute.precompute(source, model, tmp_path / "encoded", dtype="float32",
                                  batch_frames=BATCH_FRAMES)
  assert encoded.info.features["moments"].shape == (None, 8, 8, 8)
  expected = _encode_each_clip(model, source)
  lengths = sorted(len(ex["moments"]) for ex in _examples(encoded)["train"].values())
  assert lengths == [7, 9, 12]
  iterator = _iterator(encoded, min_stride=3, max_stride=4, global_batch_size=3)
  for _ in range(2):
    _check_pairing(next(iterator), encoded, expected)


def test_float16_storage_rounds_the_encoding(model, source, expected, tmp_path):
  builder = precompute.precompute(source, model, tmp_path, batch_frames=64)
  for clips in _examples(builder).values():
    for source_id, ex in clips.items():
      moments, text = expected[source_id]
      assert ex["moments"].dtype == ex["text_states"].dtype == np.float16
      np.testing.assert_allclose(ex["moments"], moments, rtol=1e-3, atol=1e-3)
      np.testing.assert_allclose(ex["text_states"], text, rtol=1e-3, atol=1e-3)


def test_encode_clips_keeps_order_and_lengths_across_batches():
  clips = [{"frames": np.full((n, 1), n)} for n in (3, 7, 1, 4)]
  calls = []

  def encode(frames):
    calls.append(len(frames))
    return frames * 10

  out = list(precompute.encode_clips(clips, encode, batch_frames=4))
  assert [clip["frames"].shape[0] for clip, _ in out] == [3, 7, 1, 4]
  for clip, encoded_frames in out:
    np.testing.assert_array_equal(encoded_frames, clip["frames"] * 10)
  assert calls == [4] * 4  # 15 frames: three full batches and one padded.


def test_rerun_keeps_the_encoding_and_refuses_another(encoded, command, capsys):
  assert precompute.main(command) == 0
  assert precompute.main(command + ["--dtype=float16"]) == 2
  assert "already holds an encoding" in capsys.readouterr().err


def test_load_encoded_names_the_command_when_empty(tmp_path):
  with pytest.raises(FileNotFoundError, match="artv_jax.data.precompute"):
    precompute.load_encoded(tmp_path)


def test_unknown_variant_is_a_named_error(tmp_path, capsys):
  command = ["--dataset=synthetic_shapes", f"--data_dir={tmp_path}", "--resolution=32",
             "--variant=nosuch", f"--pretrained={tmp_path}", f"--out={tmp_path / 'out'}"]
  assert precompute.main(command) == 2
  assert "no variant 'nosuch'" in capsys.readouterr().err
