"""Mesh, sharding rules and multi-device / multi-process training (artv_jax/parallel.py).

Training runs happen in fresh CPU worker processes (tests/multihost_worker.py), so that they
can have several devices or processes while this one keeps its single device, and so that the
1-device reference runs on CPU too wherever the suite runs.
"""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from artv_jax import parallel
from tests import multihost_worker

RTOL = 1e-5  # f32 sums in another order.


@pytest.fixture(scope="module")
def one_device_run():
  (result,) = multihost_worker.launch("toy_train", args=["--data=1", "--fsdp=1", "--steps=3"])
  return result


@pytest.fixture(scope="module")
def eight_device_run():
  (result,) = multihost_worker.launch("toy_train", devices_per_process=8,
                                      args=["--data=2", "--fsdp=-1", "--steps=3"])
  return result


def assert_same_training(got, want):
  np.testing.assert_allclose(got["losses"], want["losses"], rtol=RTOL)
  assert got["params"].keys() == want["params"].keys()
  for name, value in want["params"].items():
    # Relative to the tensor's scale: entries near 0 carry the rounding noise of larger ones.
    np.testing.assert_allclose(got["params"][name], value, rtol=RTOL,
                               atol=RTOL * np.abs(value).max(), err_msg=name)


# Mesh.


def test_make_mesh_fills_in_minus_one(eight_device_run):
  assert eight_device_run["mesh"] == {"data": 2, "fsdp": 4}  # Asked for data=2, fsdp=-1.


@pytest.mark.parametrize("data, fsdp, match", [
    (4, 2, "data=4 x fsdp=2 = 8 devices, but there are 6"),
    (-1, 4, "6 devices cannot be split into groups of 4"),
    (-1, -1, "only one of data, fsdp may be -1"),
    (0, 6, "data=0 x fsdp=6"),
])
def test_make_mesh_rejects_sizes_not_matching_devices(data, fsdp, match):
  with pytest.raises(ValueError, match=match):
    parallel.make_mesh(data, fsdp, devices=jax.devices()[:1] * 6)


# Sharding rules.


@pytest.mark.parametrize("shape, want", [
    ((3, 3, 320, 640), P(None, None, None, "fsdp")),  # conv HWIO: largest dim.
    ((1280, 320), P("fsdp", None)),  # linear [in, out]: largest dim, even if first.
    ((3, 3, 320, 320), P(None, None, None, "fsdp")),  # tie: last (output channels).
    ((1026, 320), P(None, "fsdp")),  # largest dim not divisible: next one that is.
    ((1026, 322), P()),  # no divisible dim: replicated.
])
def test_fsdp_spec_splits_largest_divisible_dim(shape, want):
  assert parallel.fsdp_spec(shape, num_shards=4, min_size=1) == want


@pytest.mark.parametrize("shape", [(1280,), (320,), ()])  # bias, norm scale, step count
def test_fsdp_spec_replicates_small_tensors(shape):
  assert parallel.fsdp_spec(shape, num_shards=4) == P()


def test_fsdp_spec_replicates_everything_without_fsdp_axis():
  assert parallel.fsdp_spec((1280, 320), num_shards=1, min_size=1) == P()


def test_optimizer_state_is_sharded_like_params(eight_device_run):
  assert eight_device_run["adam_mu_specs"] == eight_device_run["param_specs"]


# Training on 8 virtual devices and on 2 processes.


def test_params_are_sharded_over_fsdp(eight_device_run):
  specs, shapes = eight_device_run["param_specs"], eight_device_run["shard_shapes"]
  assert specs["Dense_1/kernel"] == [None, "fsdp"]
  assert shapes["Dense_1/kernel"] == [multihost_worker.HIDDEN, multihost_worker.HIDDEN // 4]
  assert specs["Dense_2/kernel"] == []  # Below MIN_SIZE.
  assert specs["Dense_0/bias"] == []


def test_sharded_train_step_matches_one_device(eight_device_run, one_device_run):
  assert_same_training(eight_device_run, one_device_run)


def test_two_processes_match_one_process():
  args = ["--data=1", "--fsdp=4", "--steps=3"]
  (want,) = multihost_worker.launch("toy_train", devices_per_process=4, args=args)
  got = multihost_worker.launch("toy_train", num_processes=2, devices_per_process=2, args=args)
  for process_result in got:
    assert_same_training(process_result, want)


def test_host_local_to_global_on_one_process_is_the_batch():
  batch = {"x": np.arange(12, dtype=np.float32).reshape(4, 3)}
  global_batch = parallel.host_local_to_global(batch, parallel.make_mesh(1, 1))
  np.testing.assert_array_equal(global_batch["x"], batch["x"])
  assert global_batch["x"].sharding.spec == P(("data", "fsdp"))


# Multi-host initialisation: which arguments reach jax.distributed.initialize.


@pytest.fixture
def initialize_calls(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  for name in ("SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_STEP_NUM_NODES", "SLURM_NNODES",
               "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(parallel, "_on_cloud_tpu_vm", lambda: False)
  return calls


def test_initialize_single_process_does_nothing(initialize_calls):
  parallel.initialize_distributed()
  assert initialize_calls == []


def test_initialize_explicit_coordinator(initialize_calls):
  parallel.initialize_distributed("10.0.0.1:1234", num_processes=4, process_id=2)
  assert initialize_calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=4,
                                   process_id=2, local_device_ids=None)]


def test_initialize_slurm_one_task_per_node_uses_all_local_gpus(initialize_calls, monkeypatch):
  monkeypatch.setenv("SLURM_STEP_NODELIST", "node[001-002]")
  monkeypatch.setenv("SLURM_NTASKS", "2")
  monkeypatch.setenv("SLURM_STEP_NUM_NODES", "2")
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
  parallel.initialize_distributed()
  assert initialize_calls == [dict(local_device_ids=[0, 1, 2, 3],
                                   cluster_detection_method="slurm")]


def test_initialize_slurm_one_bound_gpu_per_task_is_device_0(initialize_calls, monkeypatch):
  """--gpus-per-task=1: task 5 sees only GPU 5, as its device 0 (not JAX's SLURM_LOCALID)."""
  monkeypatch.setenv("SLURM_STEP_NODELIST", "node[001-002]")
  monkeypatch.setenv("SLURM_NTASKS", "16")
  monkeypatch.setenv("SLURM_STEP_NUM_NODES", "2")
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
  parallel.initialize_distributed()
  assert initialize_calls == [dict(local_device_ids=[0], cluster_detection_method="slurm")]


def test_initialize_slurm_unbound_tasks_leave_devices_to_jax(initialize_calls, monkeypatch):
  """No GPU binding: every task sees every GPU, and JAX takes device SLURM_LOCALID."""
  monkeypatch.setenv("SLURM_STEP_NODELIST", "node[001-002]")
  monkeypatch.setenv("SLURM_NTASKS", "8")
  monkeypatch.setenv("SLURM_STEP_NUM_NODES", "2")
  parallel.initialize_distributed()
  assert initialize_calls == [dict(local_device_ids=None, cluster_detection_method="slurm")]
