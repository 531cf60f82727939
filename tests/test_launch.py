"""The launch scripts: valid bash, and what each process gets under a fake srun / gcloud."""
import glob
import json
import os
import re
import stat
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = os.path.join(REPO, "launch", "slurm_gpu.sbatch")

# srun as SLURM runs a step: SLURM_NNODES nodes x SLURM_NTASKS_PER_NODE tasks, each with its
# rank variables and the GPUs bound to it (--gpus-per-task, else --gpus-per-node shared out).
FAKE_SRUN = r"""#!PYTHON
import os, subprocess, sys
args = sys.argv[1:]
while args[0].startswith("--"):  # srun's own options, before the command.
  args = args[1:]
nodes, per_node = int(os.environ["SLURM_NNODES"]), int(os.environ["SLURM_NTASKS_PER_NODE"])
per_task = int(os.environ.get("SLURM_GPUS_PER_TASK", "0")) or (
    int(os.environ["SLURM_GPUS_PER_NODE"]) // per_node)
tasks = []
for node in range(nodes):
  for local in range(per_node):
    gpus = range(local * per_task, (local + 1) * per_task)
    env = dict(os.environ, SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"],
               SLURM_NTASKS=str(nodes * per_node), SLURM_PROCID=str(node * per_node + local),
               SLURM_LOCALID=str(local), SLURM_NODEID=str(node), SLURM_STEP_NUM_NODES=str(nodes),
               SLURM_GPUS_ON_NODE=str(per_node * per_task),
               CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)))
    tasks.append(subprocess.Popen(args, env=env))
sys.exit(max(t.wait() for t in tasks))
"""

# Stands in for the interpreter srun starts: prints what jax.distributed.initialize would be
# given and what JAX makes of it, without starting anything.
PROBE = r"""#!PYTHON
import json, os, sys
sys.path.insert(0, REPO)
import jax
from jax._src import clusters
from artv_jax import parallel
captured = {}
jax.distributed.is_initialized = lambda: False
jax.distributed.initialize = lambda **kwargs: captured.update(kwargs)
parallel.initialize_distributed()
address, count, rank, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
    None, None, None, captured.get("local_device_ids"),
    captured.get("cluster_detection_method"), None)
line = json.dumps(dict(argv=sys.argv[1:], coordinator=address, num_processes=count,
                       process_id=rank, local_device_ids=list(local),
                       visible=os.environ["CUDA_VISIBLE_DEVICES"]))
os.write(1, (line + "\n").encode())  # One write: the tasks share the pipe.
"""


def _executable(path, text: str) -> str:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text.replace("PYTHON", sys.executable).replace("REPO", repr(REPO)))
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return str(path)


@pytest.mark.parametrize("script", sorted(glob.glob(os.path.join(REPO, "launch", "*"))))
def test_launch_script_is_valid_bash(script):
  subprocess.run(["bash", "-n", script], check=True)


def _sbatch_directive(name: str) -> str:
  with open(SBATCH, encoding="utf-8") as f:
    return re.search(rf"^#SBATCH --{name}=(\S+)", f.read(), re.M).group(1)


def _run_sbatch(tmp_path, **slurm):
  """Runs the batch script as sbatch would on the first node, with ``slurm`` variables."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _executable(bin_dir / "srun", FAKE_SRUN)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
             SLURM_JOB_NODELIST="gpu[07-08]", SLURM_NNODES="2",
             PYTHON=_executable(tmp_path / "probe", PROBE), **slurm)
  out = subprocess.run(["bash", SBATCH, "configs/base.py", "/shared/runs/artv",
                        "--config.train.batch_size=64"], env=env, cwd=REPO, check=True,
                       capture_output=True, text=True, timeout=300)
  return sorted((json.loads(line) for line in out.stdout.splitlines()),
                key=lambda p: p["process_id"])


def test_sbatch_default_is_one_process_per_node_with_all_its_gpus(tmp_path):
  processes = _run_sbatch(
      tmp_path, SLURM_NTASKS_PER_NODE=_sbatch_directive("ntasks-per-node"),
      SLURM_GPUS_PER_NODE=_sbatch_directive("gpus-per-node"))
  port = 4242 % 2**12 + 65535 - 2**12 + 1  # JAX's SLURM port for job 4242.
  assert [p["process_id"] for p in processes] == [0, 1]
  for p in processes:
    assert p["coordinator"] == f"gpu07:{port}" and p["num_processes"] == 2
    assert p["visible"] == "0,1,2,3,4,5,6,7" and p["local_device_ids"] == list(range(8))
    assert p["argv"] == ["-m", "artv_jax.main", "--config=configs/base.py",
                         "--workdir=/shared/runs/artv", "--config.train.batch_size=64"]


def test_sbatch_one_gpu_per_task_gives_each_its_own_gpu_as_device_0(tmp_path):
  processes = _run_sbatch(tmp_path, SLURM_NTASKS_PER_NODE="2", SLURM_GPUS_PER_TASK="1")
  assert [p["process_id"] for p in processes] == [0, 1, 2, 3]
  assert [p["visible"] for p in processes] == ["0", "1", "0", "1"]
  assert all(p["local_device_ids"] == [0] for p in processes)
  assert {p["coordinator"].split(":")[0] for p in processes} == {"gpu07"}


def test_tpu_pod_checks_python_syncs_a_clean_copy_and_installs_the_tpu_extra(tmp_path):
  log = tmp_path / "gcloud.log"
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _executable(bin_dir / "gcloud", f"#!/bin/bash\nprintf '%s\\n' \"$*\" >> {log}\n")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TPU_NAME="artv",
             ZONE="us-central2-b")
  subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), "configs/base.py",
                  "gs://bucket/run", "--config.train.batch_size=64"], env=env, check=True,
                 capture_output=True, timeout=120)
  calls = log.read_text().splitlines()
  assert calls[0].startswith("compute tpus tpu-vm describe artv")  # Exists: not created.
  commands = [c for c in calls if " ssh " in f" {c} "]
  assert "python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'" in commands[0]
  assert [c for c in calls if " scp " in f" {c} "][0].endswith("artv:artv_jax.tar.gz")
  assert "rm -rf ~/artv_jax && mkdir ~/artv_jax && tar -xzf ~/artv_jax.tar.gz" in commands[1]
  assert "python3 -m pip install -q -e '.[tpu]'" in commands[2]
  assert ("python3 -m artv_jax.main --config=configs/base.py --workdir=gs://bucket/run "
          "--config.train.batch_size=64") in commands[3]
