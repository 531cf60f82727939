"""The converter (python -m artv_jax.convert) and load_pretrained, end to end against the
PyTorch networks the tiny checkpoints were saved from."""
import functools
import shutil
import subprocess
import sys

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import transformers

from artv_jax import convert
from artv_jax.checkpoints import ldm_layout, load_pretrained, orbax_io, pretrained, sources
from artv_jax.checkpoints.rename import convert_state_dict
from tests.checkpoints import tiny_sd

STYLES_AND_LAYOUTS = pytest.mark.parametrize("style, layout", [
    (style, layout) for style in tiny_sd.STYLES for layout in tiny_sd.LAYOUTS])


@functools.partial(jax.jit, static_argnames=("module", "method"))
def _apply(params, *inputs, module, method="__call__"):
  # Equal modules hash equal, so both layouts of a style share one compilation.
  return module.apply({"params": params}, *inputs, method=method)


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(x).permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> np.ndarray:
  return x.permute(0, 2, 3, 1).numpy()


def _assert_close(got, want):
  """Max abs error within 1e-4 of the output scale."""
  got = np.asarray(got)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def _normal(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@STYLES_AND_LAYOUTS
def test_unet_matches_diffusers(tiny, loaded, style, layout):
  model, sd = tiny(style), loaded(style, layout)
  latents = _normal((2, 8, 8, 4), 0)
  timesteps = np.array([3, 817], np.int32)
  text_states = _normal((2, 5, sd.unet.cross_attention_dim), 1)

  with torch.no_grad():
    want = model.unet(_nchw(latents), torch.from_numpy(timesteps),
                      torch.from_numpy(text_states)).sample
  got = _apply(sd.params["unet"], latents, timesteps, text_states, module=sd.unet)

  _assert_close(got, _nhwc(want))


@STYLES_AND_LAYOUTS
def test_vae_encode_matches_diffusers(tiny, loaded, style, layout):
  model, sd = tiny(style), loaded(style, layout)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)

  with torch.no_grad():
    want = model.vae.encode(_nchw(images)).latent_dist
  got = _apply(sd.params["vae"], images, module=sd.vae, method="encode")

  _assert_close(got.mean, _nhwc(want.mean))
  _assert_close(got.logvar, _nhwc(want.logvar))


@STYLES_AND_LAYOUTS
def test_vae_decode_matches_diffusers(tiny, loaded, style, layout):
  model, sd = tiny(style), loaded(style, layout)
  side = 16 // 2 ** (len(sd.vae.block_out_channels) - 1)
  latents = _normal((2, side, side, 4), 0)

  with torch.no_grad():
    want = model.vae.decode(_nchw(latents)).sample
  got = _apply(sd.params["vae"], latents, module=sd.vae, method="decode")

  _assert_close(got, _nhwc(want))


@STYLES_AND_LAYOUTS
def test_text_encoder_matches_transformers(tiny, loaded, style, layout):
  model, sd = tiny(style), loaded(style, layout)
  ids = sd.tokenizer(tiny_sd.PROMPTS, padding="max_length", max_length=tiny_sd.MAX_LENGTH,
                     truncation=True, return_tensors="np").input_ids

  with torch.no_grad():
    want = model.text_encoder(input_ids=torch.from_numpy(ids).long()).last_hidden_state
  got = _apply(sd.params["text_encoder"], ids.astype(np.int32), module=sd.text_encoder)

  _assert_close(got, want.numpy())


@pytest.mark.parametrize("style", tiny_sd.STYLES)
def test_both_layouts_give_identical_parameters(loaded, style):
  folder, single_file = loaded(style, "folder"), loaded(style, "single_file")

  assert jax.tree.structure(folder.params) == jax.tree.structure(single_file.params)
  jax.tree.map(np.testing.assert_array_equal, folder.params, single_file.params)


@pytest.mark.parametrize("style", tiny_sd.STYLES)
def test_tokenizer_loads_from_converted_dir_and_tokenizes(tiny, converted, style):
  source = transformers.CLIPTokenizer.from_pretrained(tiny(style).tokenizer_dir)
  tokenizer = pretrained.load_tokenizer(converted(style, "folder") / "tokenizer")

  got = tokenizer(tiny_sd.PROMPTS, padding="max_length", max_length=tiny_sd.MAX_LENGTH).input_ids
  want = source(tiny_sd.PROMPTS, padding="max_length", max_length=tiny_sd.MAX_LENGTH).input_ids

  assert got == want
  assert all(len(ids) == tiny_sd.MAX_LENGTH for ids in got)
  assert tokenizer.pad_token == source.pad_token  # SD2 pads with "!", SD1 with end-of-text.


@pytest.mark.parametrize("style", tiny_sd.STYLES)
def test_config_holds_the_network_and_scheduler_configs(tiny, loaded, style):
  model, sd = tiny(style), loaded(style, "single_file")

  assert sd.config["scheduler"]["prediction_type"] == tiny_sd.PREDICTION_TYPES[style]
  assert sd.config["unet"]["block_out_channels"] == list(model.unet.config.block_out_channels)
  assert sd.config["vae"]["scaling_factor"] == model.vae.config.scaling_factor
  assert sd.config["text_encoder"]["hidden_act"] == model.text_encoder.config.hidden_act


def test_load_pretrained_casts_parameters_and_sets_compute_dtype(converted):
  sd = load_pretrained(converted("sd1", "folder"), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)

  assert {leaf.dtype for leaf in jax.tree.leaves(sd.params)} == {jnp.dtype(jnp.bfloat16)}
  assert sd.unet.dtype == sd.vae.dtype == sd.text_encoder.dtype == jnp.bfloat16


def test_load_pretrained_rejects_an_unconverted_folder(tiny):
  with pytest.raises(FileNotFoundError, match="artv_jax.convert"):
    load_pretrained(tiny("sd1").folder)


def test_converted_checkpoint_round_trips_through_orbax(tiny, converted, tmp_path):
  model = tiny("sd2")
  targets = pretrained.abstract_params(
      pretrained.build_networks(pretrained.read_configs(model.folder)))
  want = {name: convert_state_dict({k: v.numpy() for k, v in network.state_dict().items()},
                                   targets[name])
          for name, network in (("unet", model.unet), ("vae", model.vae),
                                ("text_encoder", model.text_encoder))}

  saved = orbax_io.restore_params(converted("sd2", "folder") / pretrained.PARAMS_DIR)
  orbax_io.save_params(tmp_path / "params", saved)
  restored = orbax_io.restore_params(tmp_path / "params", targets)

  for got in (saved, restored):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert leaf.dtype == np.float32
      np.testing.assert_array_equal(leaf, want_leaf)


def _copy_folder(tiny, tmp_path, edit_unet):
  """The sd1 diffusers folder with its UNet state dict changed by ``edit_unet``."""
  folder = shutil.copytree(tiny("sd1").folder, tmp_path / "edited")
  weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
  state_dict = safetensors.numpy.load_file(weights)
  edit_unet(state_dict)
  safetensors.numpy.save_file(state_dict, weights)
  return folder


_MISSING = "down_blocks.0.attentions.0.proj_in.bias"
_EDITS = {
    "missing": (lambda sd: sd.pop(_MISSING), "down_blocks_0/attentions_0/proj_in/bias"),
    "extra": (lambda sd: sd.update({"mid_block.extra.weight": np.ones(3, np.float32)}),
              "mid_block.extra.weight"),
    "wrong_shape": (lambda sd: sd.update({"conv_out.bias": np.ones(5, np.float32)}),
                    "conv_out.bias"),
}


@pytest.mark.parametrize("kind", list(_EDITS))
def test_rejects_a_mismatched_checkpoint_naming_the_key(tiny, tmp_path, capsys, kind):
  edit, key = _EDITS[kind]
  folder = _copy_folder(tiny, tmp_path, edit)

  status = convert.main(["--src", str(folder), "--dst", str(tmp_path / "out")])

  assert status == 2
  error = capsys.readouterr().err
  assert key in error and "unet" in error
  assert not (tmp_path / "out").exists()


def test_rejects_an_unknown_single_file_key_by_its_original_name(tiny, tmp_path, capsys):
  original = safetensors.numpy.load_file(tiny("sd1").single_file)
  key = "model.diffusion_model.input_blocks.1.0.in_layers.9.weight"  # No such layer in ldm.
  original[key] = np.ones(3, np.float32)
  safetensors.numpy.save_file(original, tmp_path / "extra.safetensors")
  args = tiny_sd.convert_args(tiny("sd1"), "single_file")
  args[1] = str(tmp_path / "extra.safetensors")

  assert convert.main(args + ["--dst", str(tmp_path / "out")]) == 2
  assert key in capsys.readouterr().err


def test_wrong_config_preset_fails_naming_the_architecture(tiny, tmp_path, capsys):
  model = tiny("sd1")

  status = convert.main(["--src", str(model.single_file), "--config-from", "sd15",
                         "--tokenizer", str(model.tokenizer_dir), "--dst", str(tmp_path / "out")])

  assert status == 2
  error = capsys.readouterr().err
  assert "block_out_channels: config (320, 640, 1280, 1280), checkpoint (8, 16)" in error


def test_single_file_with_a_preset_asks_for_a_tokenizer(tiny, tmp_path, capsys):
  status = convert.main(["--src", str(tiny("sd1").single_file), "--config-from", "sd15",
                         "--dst", str(tmp_path / "out")])

  assert status == 2
  assert "--tokenizer" in capsys.readouterr().err


def test_single_file_asks_for_config_from(tiny, tmp_path, capsys):
  status = convert.main(["--src", str(tiny("sd1").single_file), "--dst", str(tmp_path / "out")])

  assert status == 2
  assert "--config-from" in capsys.readouterr().err


def test_refuses_a_non_empty_destination_without_overwrite(tiny, tmp_path, capsys):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("x")

  status = convert.main(["--src", str(tiny("sd1").folder), "--dst", str(tmp_path / "out")])

  assert status == 2
  assert "--overwrite" in capsys.readouterr().err
  assert (tmp_path / "out" / "keep.txt").exists()


def test_overwrite_replaces_the_destination(tiny, converted, tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "stale.txt").write_text("x")

  status = convert.main(["--src", str(tiny("sd1").folder), "--dst", str(tmp_path / "out"),
                         "--overwrite"])

  assert status == 0
  assert not (tmp_path / "out" / "stale.txt").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # No temporary left behind.
  assert (sorted(p.name for p in (tmp_path / "out").iterdir())
          == sorted(p.name for p in converted("sd1", "folder").iterdir()))


def test_legacy_bin_folder_converts_like_safetensors(tiny, loaded, tmp_path):
  """.bin weights, transformers' text_model. prefix and position_ids buffer, and diffusers'
  pre-0.14 VAE attention names, as older SD repositories ship them."""
  old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  model = tiny("sd1")
  folder = shutil.copytree(model.folder, tmp_path / "legacy")
  for name, network in (("unet", model.unet), ("vae", model.vae)):
    state_dict = network.state_dict()
    if name == "vae":
      state_dict = {_rename_component(k, old_names): v for k, v in state_dict.items()}
    (folder / name / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state_dict, folder / name / "diffusion_pytorch_model.bin")
  text = {f"text_model.{k}": v for k, v in model.text_encoder.state_dict().items()}
  text["text_model.embeddings.position_ids"] = torch.arange(tiny_sd.MAX_LENGTH)[None]
  (folder / "text_encoder" / "model.safetensors").unlink()
  torch.save(text, folder / "text_encoder" / "pytorch_model.bin")

  assert convert.main(["--src", str(folder), "--dst", str(tmp_path / "out")]) == 0
  params = load_pretrained(tmp_path / "out").params

  jax.tree.map(np.testing.assert_array_equal, params, loaded("sd1", "folder").params)


def _rename_component(key: str, names: dict) -> str:
  for new, old in names.items():
    key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
  return key


def test_reads_bfloat16_safetensors_with_numpy(tmp_path):
  weights = torch.randn(3, 4).to(torch.bfloat16)
  safetensors.torch.save_file({"w": weights}, tmp_path / "w.safetensors")

  got = sources.read_weights(tmp_path / "w.safetensors")["w"]

  assert isinstance(got, np.ndarray) and got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(got.astype(np.float32), weights.float().numpy())


def test_converts_safetensors_without_torch(tiny, tmp_path):
  script = ("import sys; sys.modules['torch'] = None  # Any import of torch now fails.\n"
            "from artv_jax import convert\n"
            f"sys.exit(convert.main(['--src', {str(tiny('sd1').folder)!r}, "
            f"'--dst', {str(tmp_path / 'out')!r}]))")

  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)

  assert result.returncode == 0, result.stderr
  assert (tmp_path / "out" / pretrained.PARAMS_DIR).is_dir()


def test_command_line_bad_input_exits_2_without_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "artv_jax.convert", "--src", str(tmp_path / "nothing"),
       "--dst", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)

  assert result.returncode == 2
  assert "does not exist" in result.stderr
  assert "Traceback" not in result.stderr


_PRESET_STYLES = {"sd15": "sd1", "sd21-base": "sd2", "sd21": "sd2"}


@functools.lru_cache
def _preset(preset: str) -> tuple[dict, dict]:
  """The preset's configs and the abstract parameters of our full-size networks."""
  configs = pretrained.read_configs(sources.PRESETS_DIR / preset)
  return configs, pretrained.abstract_params(pretrained.build_networks(configs))


def _meta_models(configs: dict) -> dict:
  with torch.device("meta"):  # Full-size models without allocating their weights.
    return {"unet": diffusers.UNet2DConditionModel.from_config(configs["unet"]),
            "vae": diffusers.AutoencoderKL.from_config(configs["vae"]),
            "text_encoder": transformers.CLIPTextModel(
                transformers.CLIPTextConfig(**configs["text_encoder"]))}


def _zeros(model: torch.nn.Module) -> dict:
  # Zero-stride arrays: the right shapes without memory, enough to match keys and shapes.
  return {k: np.broadcast_to(np.float32(0), v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("preset", sources.presets())
def test_preset_builds_the_networks_diffusers_builds(preset):
  configs, targets = _preset(preset)

  for name, model in _meta_models(configs).items():  # Raises, listing keys, on a difference.
    convert_state_dict(_zeros(model), targets[name], what=f"{preset} {name}")


@pytest.mark.parametrize("preset", sources.presets())
def test_preset_fits_a_full_size_single_file(preset):
  configs, targets = _preset(preset)
  style = _PRESET_STYLES[preset]
  text_config = dict(configs["text_encoder"])
  if style == "sd2":  # The single file holds OpenCLIP at full depth.
    text_config["num_hidden_layers"] += 1
  models = _meta_models({**configs, "text_encoder": text_config})
  original = tiny_sd.to_original_layout(style, *(_zeros(models[name]) for name in models),
                                        configs["unet"], configs["vae"])

  networks = ldm_layout.convert_single_file(original)

  for name, renamed in networks.items():
    state_dict = {k.removeprefix("text_model."): v for k, v in renamed.state_dict.items()
                  if not k.endswith("position_ids")}  # What sources does for the text encoder.
    convert_state_dict(state_dict, targets[name], what=f"{preset} {name}")
