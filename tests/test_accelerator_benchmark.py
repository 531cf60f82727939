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


def test_memory_plan_classes_residuals_by_what_they_depend_on():
  import jax
  import jax.numpy as jnp
  from artv_jax import parallel
  memory_plan = _load_benchmark("memory_plan")
  mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
  gather = lambda x: parallel.gather_params(x, mesh)  # As the train step gathers.

  def loss(params, x):
    w3 = gather(params["w3"])  # Needed by the backward as it is: the gather alone.
    w2 = gather(params["w2"].astype(jnp.bfloat16))  # Cast, then gathered: a copy.
    h = jnp.tanh(x @ gather(params["w1"])) @ w3
    out = (h.astype(jnp.bfloat16) @ w2).astype(jnp.float32)
    return jnp.sum(out**2) + jnp.sum(jnp.sin(params["b"]))  # cos(b): weights alone.

  params = {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in
            (("w1", (3, 4)), ("w2", (4, 5)), ("w3", (4, 4)), ("b", (7,)))}

  def kinds(batch):
    x = jax.ShapeDtypeStruct((batch, 3), jnp.float32)
    sources = [frozenset({"param"})] * 4 + [frozenset({"data"})]
    return memory_plan.residuals(loss, [params, x], [0], sources, ["params"] * 4 + [None])

  one, two = kinds(1), kinds(2)
  assert one["gathered_alias"] == two["gathered_alias"] == 4 * 4 * 4
  assert one["gathered_copy"] == two["gathered_copy"] == 4 * 5 * 2
  assert one["weights"] == two["weights"] == 7 * 4
  assert one["inputs"] == 3 * 4 and two["inputs"] == 2 * 3 * 4  # x, held by the step anyway.
  assert one["activations"] > 0 and two["activations"] == 2 * one["activations"]


def test_memory_plan_splits_the_state_as_the_fsdp_shardings_do():
  import types
  import jax
  import jax.numpy as jnp
  memory_plan = _load_benchmark("memory_plan")
  leaf = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  params = {"kernel": leaf(64, 512), "bias": leaf(512), "odd": leaf(3, 7, 999)}
  trainer = types.SimpleNamespace(
      abstract_state=types.SimpleNamespace(params=params, opt_state=(params, params),
                                           ema_params=params),
      frozen={"text": leaf(1024, 64)})
  # bias: too small to split; odd: no dimension 8 divides; the others split by 8.
  expected = (64 * 512 // 8 + 512 + 3 * 7 * 999) * 4 / 2**30
  states = memory_plan.state_gb(trainer, 8, min_size=2**14)
  assert states["params_gb"] == states["ema_gb"] == pytest.approx(expected)
  assert states["optimizer_gb"] == pytest.approx(2 * expected)
  assert states["frozen_gb"] == pytest.approx(1024 * 64 * 4 / 8 / 2**30)


def _analysis():
  states = {n: dict(params_gb=4.0 / n, optimizer_gb=8.0 / n, ema_gb=4.0 / n, frozen_gb=2.0 / n)
            for n in (1, 8, 32)}
  part = lambda fixed=0.0, per_example=0.0: dict(fixed=fixed, per_example=per_example)
  parts = {remat: dict(activations=part(per_example=0.1 if remat else 2.5),
                       weights=part(0.02 if remat else 2.0), gathered_copy=part(),
                       gathered_alias=part(4.0 if remat else 0.0), constants=part())
           for remat in (True, False)}
  return dict(states=states, parts=parts, gather_dtype="float32",
              blocks={True: [dict(fixed=0.5, per_example=0.3), dict(fixed=0.1, per_example=0.4)],
                      False: []},
              largest_value={True: part(per_example=0.02), False: part(per_example=0.02)})


def test_memory_plan_sums_states_gradients_residuals_and_transients_per_device():
  memory_plan = _load_benchmark("memory_plan")
  analysis = _analysis()
  one = memory_plan.device_gb(analysis, 1, True, 32)
  assert one["states_gb"] == pytest.approx(18.0)
  assert one["grads_gb"] == pytest.approx(4.0)  # fp32, whole: no reduce-scatter at fsdp 1.
  assert one["weights_gb"] == pytest.approx(0.02)  # The gather is a no-op at fsdp 1.
  assert one["activations_gb"] == pytest.approx(0.1 * 32)
  # The block holding the most at 32 examples, and the largest value with its cotangent.
  assert one["transient_gb"] == pytest.approx(0.1 + 0.4 * 32 + 2 * 0.02 * 32)
  assert one["update_gb"] == pytest.approx(18.0 + 2 * 4.0)
  assert one["total_gb"] == pytest.approx(max(one["backward_gb"], one["update_gb"]))
  eight = memory_plan.device_gb(analysis, 8, True, 32)
  assert eight["states_gb"] == pytest.approx(18.0 / 8)
  assert eight["grads_gb"] == pytest.approx(4.0 / 8 + 4.0)  # Sharded + whole before scatter.
  assert eight["weights_gb"] == pytest.approx(0.02 + 4.0)  # Every device gathers them all.


def test_memory_plan_finds_the_fewest_accumulation_steps_that_fit():
  memory_plan = _load_benchmark("memory_plan")
  rows = memory_plan.plan(_analysis(), global_batch=256)
  assert {(r["target"], r["fsdp"]) for r in rows} == {
      ("8x H100 80GB", 1), ("8x H100 80GB", 8), ("v5p-64 (32 chips)", 1),
      ("v5p-64 (32 chips)", 8), ("v5p-64 (32 chips)", 32)}
  for r in rows:
    budget = (1 - memory_plan.RESERVE) * r["memory_gb"]
    assert r["fits"] == (r["total_gb"] <= budget)
    if r["fits"]:
      assert (r["accum"], r["accum_gb"]) == (1, r["total_gb"])
    elif r["accum"] is not None:
      micro = 256 // {"8x H100 80GB": 8, "v5p-64 (32 chips)": 32}[r["target"]]
      assert micro % r["accum"] == 0 and r["accum_gb"] <= budget
      fewer = [a for a in range(1, r["accum"]) if micro % a == 0]
      assert all(memory_plan.device_gb(_analysis(), r["fsdp"], r["remat"], micro // a)[
          "total_gb"] > budget for a in fewer)
  h100 = {(r["fsdp"], r["remat"]): r for r in rows if r["target"] == "8x H100 80GB"}
  # 32 examples x 2.5 GB without remat does not fit in 72 GB; 16 per micro-batch do.
  assert not h100[8, False]["fits"] and h100[8, False]["accum"] == 2
  assert h100[8, True]["fits"]
  most = h100[8, False]["max_examples"]
  total = lambda e: memory_plan.device_gb(_analysis(), 8, False, e)["total_gb"]
  assert 16 <= most < 32 and total(most) <= 72.0 < total(most + 1)


@pytest.mark.slow  # About 30 s on 2 cores: builds the toy networks and traces the step 6 times.
def test_memory_plan_small_counts_residuals_linear_in_examples(tmp_path):
  out = tmp_path / "plan.json"
  run = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "memory_plan.py"),
                        "--small", "--devices=", f"--out={out}"],
                       capture_output=True, text=True, check=False, cwd=REPO)
  assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
  assert "global batch 256" in run.stdout
  r = json.loads(out.read_text())
  parts = r["analysis"]["parts"]  # JSON keys: remat "true" / "false", fsdp "1", "8", ...
  for remat in ("true", "false"):
    activations = parts[remat]["activations"]
    assert activations["per_example"] > 0
    assert activations["fixed"] == pytest.approx(0, abs=1e-9)
    assert activations["error_at_4"] == pytest.approx(0, abs=1e-9)
  # Remat keeps the blocks' inputs alone: fewer activations, the gathered weights instead.
  assert parts["true"]["activations"]["per_example"] < parts["false"]["activations"][
      "per_example"]
  assert parts["true"]["gathered_alias"]["fixed"] > 0
  assert r["analysis"]["blocks"]["true"] and not r["analysis"]["blocks"]["false"]
  states = r["analysis"]["states"]
  assert 0 < states["8"]["optimizer_gb"] <= states["1"]["optimizer_gb"]
  assert len(r["targets"]) == 10 and all(t["total_gb"] > 0 for t in r["targets"])
