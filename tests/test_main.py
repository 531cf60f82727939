"""`python -m artv_jax.main`: every mode on a tiny config, and clear errors for bad input."""
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*flags, config="tests/tiny_config.py") -> subprocess.CompletedProcess:
  command = [sys.executable, "-m", "artv_jax.main", *flags]
  if config:
    command.insert(3, f"--config={config}")
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


def _assert_clean_failure(result, status, words):
  output = result.stdout + result.stderr
  assert result.returncode == status, output[-3000:]
  assert "Traceback" not in output, output[-3000:]
  for word in words:
    assert word in output, output[-3000:]


def test_unknown_config_field_is_rejected(tmp_path):
  result = _main(f"--workdir={tmp_path}", "--config.train.batch_sise=8")
  _assert_clean_failure(result, 1, ["batch_sise"])


def test_impossible_resolution_is_named(tmp_path):
  result = _main(f"--workdir={tmp_path}", "--config.data.resolution=35")
  _assert_clean_failure(result, 2, ["resolution 35", "divisible"])


def test_unknown_prediction_type_is_named(tmp_path):
  result = _main(f"--workdir={tmp_path}", "--config.model.scheduler.prediction_type=x0")
  _assert_clean_failure(result, 2, ["config.model.scheduler", "prediction_type 'x0'"])


def test_sampling_without_a_checkpoint_says_train_first(tmp_path):
  result = _main(f"--workdir={tmp_path}", "--mode=sample")
  _assert_clean_failure(result, 2, ["no checkpoint", "train first"])


def test_convert_without_source_is_named(tmp_path):
  result = _main("--mode=convert", f"--dst={tmp_path}/out", config=None)
  _assert_clean_failure(result, 2, ["--src"])


@pytest.mark.slow
def test_train_and_sample_writes_checkpoints_and_a_video(tmp_path, data_dir):
  result = _main(f"--workdir={tmp_path}", "--mode=train_and_sample",
                 f"--config.data.data_dir={data_dir}", "--config.train.num_steps=2",
                 "--config.train.checkpoint_every=2")
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  assert (tmp_path / "checkpoints" / "2").is_dir()
  assert (tmp_path / "tensorboard").is_dir()
  first = tmp_path / "samples" / "000"
  video = iio.imread(first / "video.mp4")
  assert video.shape[0] == 8  # tiny_config: sample.num_frames
  assert iio.imread(first / "video.gif").shape[0] == 8
  assert iio.imread(first / "contact_sheet.png").ndim == 3
  info = json.loads((first / "sample.json").read_text())
  assert info["complete"] and info["num_frames"] == 8

  # Sampling again, with another length and prompt, is a new run beside the first.
  prompts = "--config.sample.prompts_text=a blue square moves up on a gray background"
  result = _main(f"--workdir={tmp_path}", "--mode=sample", "--config.sample.num_frames=12",
                 prompts, f"--config.data.data_dir={data_dir}")
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  assert iio.imread(tmp_path / "samples" / "001" / "video.mp4").shape[0] == 12
  # A branch of the first run at frame 4 with the new prompt: the first run's frames, then
  # its own.
  result = _main(f"--workdir={tmp_path}", "--mode=sample", "--config.sample.branch_from=000@4",
                 "--config.sample.run_name=branch", prompts, f"--config.data.data_dir={data_dir}")
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  branch = iio.imread(tmp_path / "samples" / "branch" / "video.mp4")
  assert branch.shape == video.shape
  assert (branch[:4] == video[:4]).all() and (branch[4:] != video[4:]).any()


@pytest.mark.slow
def test_convert_mode_writes_a_loadable_checkpoint(tmp_path):
  from tests.checkpoints import tiny_sd
  from artv_jax.checkpoints import load_pretrained
  source = tiny_sd.build("sd1", tmp_path / "sd")
  result = _main("--mode=convert", f"--src={source.folder}", f"--dst={tmp_path}/converted",
                 config=None)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  sd = load_pretrained(tmp_path / "converted")
  assert set(sd.params) == {"unet", "vae", "text_encoder"}
