"""The original single-file layout: the tests' inverse mapping checked against diffusers' own
single-file conversion, and our conversion checked to undo it."""
import numpy as np
import pytest
import torch
from diffusers.loaders import single_file_utils

from artv_jax.checkpoints import ldm_layout, sources
from tests.checkpoints import tiny_sd

STYLES = pytest.mark.parametrize("style", tiny_sd.STYLES)


def _original(model: tiny_sd.TinySD) -> dict:
  return sources.read_weights(model.single_file)


def _torch(state_dict: dict) -> dict:
  return {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}


def _assert_same_state_dict(got: dict, want: dict):
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


# The tests' inverse mapping (tiny_sd.to_original_layout) against diffusers.


@STYLES
def test_original_unet_layout_is_what_diffusers_reads(tiny, style):
  model = tiny(style)

  got = single_file_utils.convert_ldm_unet_checkpoint(_torch(_original(model)), model.unet.config)

  _assert_same_state_dict(got, model.unet.state_dict())


@STYLES
def test_original_vae_layout_is_what_diffusers_reads(tiny, style):
  model = tiny(style)

  got = single_file_utils.convert_ldm_vae_checkpoint(_torch(_original(model)), model.vae.config)

  _assert_same_state_dict(got, model.vae.state_dict())


def test_original_sd1_text_layout_is_what_diffusers_reads(tiny):
  model = tiny("sd1")

  got = single_file_utils.convert_ldm_clip_checkpoint(_torch(_original(model)))

  got = {k.removeprefix("text_model."): v for k, v in got.items()
         if k != "text_model.embeddings.position_ids"}
  _assert_same_state_dict(got, model.text_encoder.state_dict())


def test_original_sd2_text_layout_is_what_diffusers_reads(tiny):
  model = tiny("sd2")
  last = model.text_encoder.config.num_hidden_layers  # The OpenCLIP layer diffusers drops.

  got = single_file_utils.convert_open_clip_checkpoint(model.text_encoder,
                                                       _torch(_original(model)))

  # diffusers drops the last layer by its index in OpenCLIP-H (23); our tiny OpenCLIP has fewer
  # layers, so diffusers keeps it here.
  extra = {k for k in got if k.startswith(f"text_model.encoder.layers.{last}.")}
  assert extra
  got = {k.removeprefix("text_model."): v for k, v in got.items() if k not in extra}
  _assert_same_state_dict(got, model.text_encoder.state_dict())


# Our conversion (ldm_layout) against the diffusers state dicts.


@STYLES
def test_single_file_unet_converts_to_diffusers_names(tiny, style):
  model = tiny(style)

  got = ldm_layout.convert_single_file(_original(model))["unet"].state_dict

  _assert_same_state_dict(got, model.unet.state_dict())


@STYLES
def test_single_file_vae_converts_to_diffusers_names(tiny, style):
  model = tiny(style)
  want = model.vae.state_dict()

  got = ldm_layout.convert_single_file(_original(model))["vae"].state_dict

  # ldm's attention projections are 1x1 convs; convert_state_dict squeezes them later.
  _assert_same_state_dict({k: v.reshape(want[k].shape) for k, v in got.items()}, want)


@STYLES
def test_single_file_text_encoder_converts_to_transformers_names(tiny, style):
  model = tiny(style)

  got = ldm_layout.convert_single_file(_original(model))["text_encoder"].state_dict

  got = {k.removeprefix("text_model."): v for k, v in got.items()
         if k != "text_model.embeddings.position_ids"}  # sources drops the buffer.
  _assert_same_state_dict(got, model.text_encoder.state_dict())


@STYLES
def test_single_file_lists_what_it_leaves_out(tiny, style):
  model = tiny(style)

  networks = ldm_layout.convert_single_file(_original(model))

  dropped = {key for renamed in networks.values() for key in renamed.dropped}
  want = {"betas", "alphas_cumprod", "model_ema.decay"}
  if style == "sd2":
    layer = model.text_encoder.config.num_hidden_layers  # OpenCLIP's last.
    last = f"cond_stage_model.model.transformer.resblocks.{layer}"
    want |= {f"{last}.{name}" for name in (
        "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias",
        "attn.out_proj.weight", "attn.out_proj.bias", "ln_2.weight", "ln_2.bias",
        "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")}
    want |= {"cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale"}
  assert dropped == want


def test_split_attention_keys_remember_their_original_name(tiny):
  networks = ldm_layout.convert_single_file(_original(tiny("sd2")))

  origin = networks["text_encoder"].origin

  assert (origin["text_model.encoder.layers.1.self_attn.k_proj.weight"]
          == "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight")


def test_rejects_keys_of_no_network(tiny):
  original = {**_original(tiny("sd1")), "control_model.zero_convs.0.weight": np.zeros(1)}

  with pytest.raises(ValueError, match="control_model.zero_convs.0.weight"):
    ldm_layout.convert_single_file(original)


def test_rejects_a_unet_with_uneven_blocks(tiny):
  original = {k: v for k, v in _original(tiny("sd1")).items()
              if not k.startswith("model.diffusion_model.input_blocks.2.")}

  with pytest.raises(ValueError, match="unrecognised ldm UNet layout"):
    ldm_layout.convert_single_file(original)
