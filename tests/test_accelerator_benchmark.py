"""benchmarks/accelerator.py at toy size, and what the GPU machine lacks: TensorFlow, TFDS,
ffmpeg (the models, the train step, the sampler and the benchmark import without them)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imports that fail as they would on a host without these packages.
_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'imageio_ffmpeg'):
      raise ImportError(f'{name} is blocked in this test')
sys.meta_path.insert(0, Block())
"""


def test_models_train_step_sampler_and_benchmark_import_without_tensorflow():
  code = _BLOCK + f"""
sys.path[:0] = [{REPO!r}, {os.path.join(REPO, 'benchmarks')!r}]
import artv_jax.models.artv, artv_jax.models.vae, artv_jax.models.clip_text
import artv_jax.train, artv_jax.sampling, artv_jax.checkpoints
import accelerator
try:
  import tensorflow
except ImportError:
  print('blocked')
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=False, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == "blocked"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("accelerator") / "small.json"
  _load_benchmark("accelerator").main(["--small", "--out", str(out)])
  return json.loads(out.read_text())


@pytest.mark.slow  # About a minute on 2 cores: every section compiles its programs.
def test_small_run_measures_every_section(small_run):
  r = small_run
  assert not r["errors"] and not r["skipped"]
  parity = r["parity"][0]
  assert parity["fp32_vs_diffusers_fp32"] < 1e-4
  assert parity["fp32_vs_diffusers_fp32"] < parity["bf16_vs_diffusers_fp32"] < 0.05
  assert [row["variant"] for row in r["train"]] == ["baseline"]
  assert [row["variant"] for row in r["levers"]] == ["no_remat"]
  # 'best' runs only when a lever made the step faster: on a noisy machine it may not.
  for section in ("train", "levers", "best"):
    for row in r.get(section, []):
      assert row["ms_per_step"] > 0 and row["model_tflops"] > 0, (section, row)
  assert [row["variant"] for row in r["torch_train"]] == ["eager"]  # No torch.compile on CPU.
  args = r["meta"]["args"]
  assert sorted(row["videos"] for row in r["sample"]) == [1, args["videos"]]
  assert sorted(row["videos"] for row in r["torch_sample"]) == [1, args["videos"]]
  for row in r["long"]:
    assert len(row["chunk_ms_per_frame"]) == args["long_frames"] // args["chunk"]
  assert set(r["ratios"])  # JAX against PyTorch, for training and for sampling.


def _load_benchmark(name: str):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_memory_plan_spreads_states_over_devices_and_scales_activations_by_examples():
  memory_plan = _load_benchmark("memory_plan")
  row = dict(devices=1, remat=True, params_gb=4.0, optimizer_gb=8.0, ema_gb=4.0, frozen_gb=2.0)
  rows = [dict(row, examples=1, temporaries_gb=5.5), dict(row, examples=2, temporaries_gb=6.0),
          dict(row, devices=4, examples=1, params_gb=1.0, temporaries_gb=5.6)]
  targets = {t["target"]: t for t in memory_plan.plan(rows, global_batch=256)}
  h100 = targets["8x H100 80GB"]
  assert h100["states_gb"] == pytest.approx(18.0 / 8)
  assert h100["fixed_temporaries_gb"] == pytest.approx(5.0)  # 5.5 - one example's 0.5.
  assert h100["activations_gb"] == pytest.approx(0.5 * 32)
  assert h100["fits"] == (h100["total_gb"] <= 72.0)
