"""Saving and restoring parameter trees with orbax."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.checkpoints import orbax_io


def _tree():
  rng = np.random.default_rng(0)
  return {"unet": {"conv_in": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
                               "bias": rng.normal(size=(8,)).astype(np.float16)}},
          "vae": {"scale": rng.normal(size=(5,)).astype(jnp.bfloat16)},
          "steps": np.arange(3, dtype=np.int32)}


def test_round_trip_gives_identical_arrays(tmp_path):
  tree = _tree()

  orbax_io.save_params(tmp_path / "params", tree)
  restored = orbax_io.restore_params(tmp_path / "params")

  assert jax.tree.structure(restored) == jax.tree.structure(tree)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(tree)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_restore_into_target_casts_to_its_dtype(tmp_path):
  tree = {"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
  orbax_io.save_params(tmp_path / "params", tree)

  restored = orbax_io.restore_params(tmp_path / "params",
                                     {"w": jax.ShapeDtypeStruct((2, 3), jnp.bfloat16)})

  assert isinstance(restored["w"], jax.Array) and restored["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(restored["w"], tree["w"].astype(jnp.bfloat16))


def test_restore_into_target_of_another_shape_fails(tmp_path):
  orbax_io.save_params(tmp_path / "params", {"w": np.zeros((2, 3), np.float32)})

  with pytest.raises(ValueError, match="shape"):
    orbax_io.restore_params(tmp_path / "params", {"w": np.zeros((3, 3), np.float32)})


def test_save_never_overwrites(tmp_path):
  orbax_io.save_params(tmp_path / "params", {"w": np.zeros(2, np.float32)})

  with pytest.raises(FileExistsError):
    orbax_io.save_params(tmp_path / "params", {"w": np.ones(2, np.float32)})
  np.testing.assert_array_equal(orbax_io.restore_params(tmp_path / "params")["w"], np.zeros(2))


def test_restore_from_a_missing_path_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="no orbax checkpoint"):
    orbax_io.restore_params(tmp_path / "nothing")
