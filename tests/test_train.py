"""The ART·V trainer: sharded steps agree with one device, runs resume exactly, loss falls."""
import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from artv_jax import build, train
from artv_jax.checkpoints import training as training_checkpoints
from tests import tiny_config
from tests.multihost_worker import artv_batch, launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_params_close(ours: dict, reference: dict, rtol: float):
  """Every parameter within ``rtol`` of the model's parameter scale.

  Relative to the whole model, not to each tensor: a zero-initialised tensor that moved by
  1e-3 would otherwise be held to 1e-8, below float32 rounding of Adam's update.
  """
  assert ours.keys() == reference.keys()
  scale = max(float(np.abs(np.asarray(v)).max()) for v in reference.values())
  for name in reference:
    a, b = np.asarray(ours[name]), np.asarray(reference[name])
    assert float(np.abs(a - b).max()) <= rtol * scale, name


@pytest.mark.slow
def test_sharded_step_matches_single_device_and_shards_parameters():
  single = launch("artv_train", 1, 1, ["--steps=3", "--data=1", "--fsdp=1"], timeout=600)[0]
  sharded = launch("artv_train", 1, 8, ["--steps=3", "--data=2", "--fsdp=4"], timeout=600)[0]
  assert sharded["mesh"] == {"data": 2, "fsdp": 4}
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5)
  _assert_params_close(sharded["params"], single["params"], rtol=1e-5)
  sharded_names = [k for k, spec in sharded["param_specs"].items() if "fsdp" in spec]
  assert "unet/conv_in/bias" not in sharded_names  # 8 elements: below min_shard_size
  assert any(name.endswith("kernel") for name in sharded_names)


@pytest.mark.slow
def test_two_processes_agree_with_one_process():
  multi = launch("artv_train", 2, 2, ["--steps=3", "--data=1", "--fsdp=4"], timeout=600)
  single = launch("artv_train", 1, 4, ["--steps=3", "--data=1", "--fsdp=4"], timeout=600)[0]
  for result in multi:
    np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-5)
    _assert_params_close(result["params"], single["params"], rtol=1e-5)


def _main(workdir, data_dir, *flags) -> subprocess.Popen:
  command = [sys.executable, "-m", "artv_jax.main", "--config=tests/tiny_config.py",
             f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *flags]
  return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _losses(workdir) -> dict[int, float]:
  """Loss per step; a step logged twice (before a crash and after) keeps the later value."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row["loss"] for row in map(json.loads, f)}


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output[-3000:]
  return output


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted_run(tmp_path, data_dir):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  _finish(_main(straight, data_dir))

  process = _main(killed, data_dir)
  deadline = time.monotonic() + 600
  while not (killed / "checkpoints" / "3").exists():
    assert process.poll() is None, process.communicate()[0][-3000:]
    assert time.monotonic() < deadline, "no checkpoint at step 3"
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  _finish(_main(killed, data_dir))

  expected, resumed = _losses(straight), _losses(killed)
  assert sorted(resumed) == sorted(expected) == [1, 2, 3, 4, 5, 6]
  for step in (4, 5, 6):
    assert resumed[step] == pytest.approx(expected[step], rel=1e-6), step


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  process = _main(tmp_path, data_dir, "--config.train.learning_rate=1e38",
                  "--config.train.checkpoint_every=1", "--config.train.num_steps=20")
  output, _ = process.communicate(timeout=600)
  assert process.returncode == 2, output[-3000:]
  assert "non-finite loss" in output
  assert "Traceback" not in output
  steps = ocp.utils.checkpoint_steps(str(tmp_path / "checkpoints"))
  assert steps and max(steps) < 20
  state = ocp.StandardCheckpointer().restore(
      tmp_path / "checkpoints" / str(max(steps)) / "state")
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.slow
def test_a_few_hundred_steps_lower_the_loss(tmp_path, data_dir):
  config = tiny_config.get_config()
  config.data.data_dir = data_dir
  config.train.update(num_steps=300, checkpoint_every=300)
  train.train_and_evaluate(config, str(tmp_path))
  losses = _losses(tmp_path)
  first = np.mean([losses[s] for s in range(1, 21)])
  last = np.mean([losses[s] for s in range(281, 301)])
  assert last < 0.6 * first, (first, last)
  # Sampling reads one parameter tree alone, equal to that of the whole state.
  trainer = train.make_trainer(config, str(tmp_path))
  manager = training_checkpoints.checkpoint_manager(str(tmp_path), config.train.keep_checkpoints)
  whole = train.restore_state(manager, trainer, 300)
  for field in ("params", "ema_params"):
    alone = training_checkpoints.restore_params(
        tmp_path, 300, field, build.param_shapes(config, trainer.models, trainer.mesh))
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(getattr(whole, field))):
      assert a.sharding == b.sharding
      np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_gradient_accumulation_averages_the_micro_batch_gradients(tmp_path):
  config = tiny_config.get_config()
  config.train.update(batch_size=4, grad_accum_steps=2)
  trainer = train.make_trainer(config, str(tmp_path))
  state = trainer.init_state()
  batch = train.to_model_batch(trainer, artv_batch(0, 4))

  # Micro-batch j holds examples j, j + 2, ... and draws from the j-th key of the step's key.
  _, step_rng = jax.random.split(state.rng)
  loss_fn = functools.partial(train.batch_loss, models=trainer.models, config=config,
                              mesh=trainer.mesh)
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  results = [grad_fn(state.params, trainer.frozen, jax.tree.map(lambda x: x[j::2], batch), key)
             for j, key in enumerate(jax.random.split(step_rng, 2))]
  grads = jax.tree.map(lambda a, b: (a + b) / 2, results[0][1], results[1][1])
  optimizer = train.make_optimizer(config, state.params)
  updates, _ = optimizer.update(grads, state.opt_state, state.params)
  expected = optax.apply_updates(state.params, updates)
  stepped, metrics = trainer.step_fn(state, batch, trainer.frozen)  # donates state
  np.testing.assert_allclose(float(metrics["loss"]),
                             (float(results[0][0][0]) + float(results[1][0][0])) / 2, rtol=1e-5)
  flat = lambda tree: {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}
  _assert_params_close(flat(stepped.params), flat(expected), rtol=1e-5)


def test_new_and_attention_trains_only_new_parts_and_attention():
  config = tiny_config.get_config()
  config.train.update(trainable="new_and_attention", warmup_steps=0, weight_decay=0.0)
  params = {"adapter": {"conv_in": {"kernel": jnp.ones((3, 3))}},
            "unet": {"conv_in": {"kernel": jnp.ones((3, 3))},
                     "down_blocks_1": {"attentions_0": {"transformer_blocks_0": {
                         "attn2": {"to_k": {"kernel": jnp.ones((3, 3))}},
                         "ff": {"net_2": {"kernel": jnp.ones((3, 3))}}}},
                         "resnets_0": {"conv1": {"kernel": jnp.ones((3, 3))}}}}}
  optimizer = train.make_optimizer(config, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  moved = {"/".join(k): bool(jnp.any(v != 0))
           for k, v in traverse_util.flatten_dict(updates).items()}
  assert moved == {
      "adapter/conv_in/kernel": True,
      "unet/conv_in/kernel": True,
      "unet/down_blocks_1/attentions_0/transformer_blocks_0/attn2/to_k/kernel": True,
      "unet/down_blocks_1/attentions_0/transformer_blocks_0/ff/net_2/kernel": False,
      "unet/down_blocks_1/resnets_0/conv1/kernel": False,
  }
  with pytest.raises(ValueError, match="trainable"):
    config.train.trainable = "everything"
    train.make_optimizer(config, params)



def test_a_model_from_scratch_takes_sd_s_schedule_with_the_configured_changes(tmp_path):
  config = tiny_config.get_config()
  config.model.scheduler.update(beta_schedule="", beta_start=0.0, beta_end=0.0,
                                prediction_type="")
  sd = build.build_models(config, jax.random.PRNGKey(0), str(tmp_path)).schedule
  assert sd.prediction_type == "epsilon"
  np.testing.assert_allclose(np.asarray(sd.betas)[[0, -1]], [0.00085, 0.012], rtol=1e-5)
  config.model.scheduler.update(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                prediction_type="v_prediction")
  changed = build.build_models(config, jax.random.PRNGKey(0), str(tmp_path)).schedule
  assert changed.prediction_type == "v_prediction"
  np.testing.assert_allclose(np.asarray(changed.betas)[[0, -1]], [1e-4, 0.02], rtol=1e-5)
