"""Two processes x two CPU devices through ``python -m artv_jax.main``, as on a pod: one stop
step for all on SIGTERM to one of them, exact resume, and a dead peer named within a bound."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 24


class Job:
  """Both processes of one run of the CLI, their output in files (a full pipe would stall).

  Runs the tiny config on ``data_dir``'s synthetic clips, or with ``config``, on its flags."""

  def __init__(self, workdir, data_dir, *flags, config=None):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                         "--xla_force_host_platform_device_count=2")
    self.logs = [os.path.join(workdir, f"process{i}.log") for i in range(2)]
    os.makedirs(workdir, exist_ok=True)
    if config is None:
      config = "tests/tiny_config.py"
      flags = (f"--config.train.num_steps={NUM_STEPS}", *flags)
    self.processes = []
    for i, log in enumerate(self.logs):
      with open(log, "a", encoding="utf-8") as out:
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "artv_jax.main", f"--config={config}",
             f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
             "--config.mesh.fsdp=2", f"--coordinator_address=127.0.0.1:{port}",
             "--num_processes=2", f"--process_id={i}", *flags],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))

  def output(self, i: int) -> str:
    with open(self.logs[i], encoding="utf-8") as f:
      return f.read()

  def wait(self, timeout: float = 600) -> list[int]:
    deadline = time.monotonic() + timeout
    for p in self.processes:
      try:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pass
    codes = [p.poll() for p in self.processes]
    for p in self.processes:
      p.kill()
      p.wait()
    return codes

  def wait_for_checkpoint(self, workdir, step: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.isdir(os.path.join(workdir, "checkpoints", str(step))):
      assert all(p.poll() is None for p in self.processes), self.output(0)[-3000:]
      assert time.monotonic() < deadline, f"no checkpoint at step {step}"
      time.sleep(0.2)


def _losses(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {row["step"]: row["loss"] for row in map(json.loads, f)}


@pytest.mark.slow  # Three two-process runs: a few minutes on 2 cores.
def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_is_exact(tmp_path, data_dir):
  straight = str(tmp_path / "straight")
  job = Job(straight, data_dir)
  assert job.wait() == [0, 0], job.output(1)[-3000:]

  stopped = str(tmp_path / "stopped")
  job = Job(stopped, data_dir)
  job.wait_for_checkpoint(stopped, 3)
  job.processes[1].send_signal(signal.SIGTERM)  # Process 1 only, as a preempted host.
  assert job.wait() == [0, 0], job.output(0)[-3000:] + job.output(1)[-3000:]
  saved = [int(line.rsplit("step ", 1)[1].split()[0]) for i in range(2)
           for line in job.output(i).splitlines() if "Preemption requested" in line]
  assert len(saved) == 2 and saved[0] == saved[1] < NUM_STEPS, saved
  assert max(ocp.utils.checkpoint_steps(os.path.join(stopped, "checkpoints"))) == saved[0]

  job = Job(stopped, data_dir)
  assert job.wait() == [0, 0], job.output(0)[-3000:]
  expected, resumed = _losses(straight), _losses(stopped)
  assert sorted(resumed) == sorted(expected) == list(range(1, NUM_STEPS + 1))
  for step in range(saved[0] + 1, NUM_STEPS + 1):
    assert resumed[step] == pytest.approx(expected[step], rel=1e-6), step


@pytest.mark.slow
def test_a_killed_peer_ends_the_other_process_with_an_error_naming_it(tmp_path, data_dir):
  workdir = str(tmp_path)
  job = Job(workdir, data_dir, "--heartbeat_timeout=10")
  job.wait_for_checkpoint(workdir, 3)
  job.processes[1].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  codes = job.wait(timeout=120)
  assert codes[0] not in (0, None), "process 0 still running 2 minutes after its peer died"
  assert time.monotonic() - killed_at < 120
  # JAX's coordination service names the dead process (task 1), in one form or the other.
  assert re.search(r"stopped sending heartbeats\):\s*1\b|Task 1 heartbeat timeout",
                   job.output(0)), job.output(0)[-3000:]


@pytest.mark.slow
def test_two_processes_fine_tune_a_converted_sd_on_webvid_mp4s(tmp_path):
  """configs/base.py shrunk: a tiny SD saved by diffusers and converted by our tool, a WebVid
  folder of mp4 files (one corrupt); the pretrained weights restored into the fsdp shardings
  on both processes, each holding only its shards; the data set built in two parts, one per
  process, at once; Grain worker processes reading the clips; then both sample one video with
  the split parameters, and process 0 alone writes it."""
  from artv_jax import convert
  from tests.checkpoints import tiny_sd
  from tests.data.test_tfds_webvid import write_webvid_manual_dir
  source = tiny_sd.build("sd2", tmp_path / "sd")
  converted = tmp_path / "converted"
  assert convert.main(tiny_sd.convert_args(source, "folder") + ["--dst", str(converted)]) == 0
  manual = tmp_path / "webvid"
  write_webvid_manual_dir(str(manual), lengths=(8, 10, 14, 9, 12))  # Both parts get videos.
  workdir = str(tmp_path / "run")
  job = Job(workdir, str(tmp_path / "tfds"), f"--config.model.pretrained={converted}",
            f"--config.data.manual_dir={manual}", "--config.data.resolution=32",
            "--config.train.batch_size=4", "--config.data.worker_count=1",
            "--config.data.webvid_parts=2",
            "--config.train.num_steps=2", "--config.train.checkpoint_every=1",
            "--config.train.log_every=1", "--config.train.warmup_steps=1",
            "--config.mesh.min_shard_size=64", "--config.model.dtype=float32",
            "--mode=train_and_sample", "--config.sample.num_frames=3",
            "--config.sample.num_steps=2", "--config.sample.chunk_frames=2",
            config="configs/base.py")
  assert job.wait() == [0, 0], job.output(0)[-3000:] + job.output(1)[-3000:]
  assert sorted(_losses(workdir)) == [1, 2]
  assert sorted(ocp.utils.checkpoint_steps(os.path.join(workdir, "checkpoints"))) == [1, 2]
  samples = os.path.join(workdir, "samples", "000")
  with open(os.path.join(samples, "sample.json"), encoding="utf-8") as f:
    info = json.load(f)
  assert info["complete"] and info["frames_written"] == 3
  assert sorted(os.listdir(os.path.join(samples, "chunks"))) == ["00000000.mp4", "00000002.mp4"]
  assert "Wrote VideoResult" in job.output(0) and "Wrote VideoResult" not in job.output(1)
  built = sorted(name for name in os.listdir(os.path.join(tmp_path, "tfds", "artv_webvid"))
                 if not name.startswith("."))
  assert built == ["32px_8fps_part0of2", "32px_8fps_part1of2"]
