"""artv_jax entry point.

  python -m artv_jax.main --config=configs/base.py --workdir=DIR [--mode=train]
      [--config.train.batch_size=8 ...]

Modes: train, sample, train_and_sample, eval (held-out benchmark, see artv_jax.evaluate),
convert (``--src``/``--dst``, see artv_jax.convert).
Bad input (a missing checkpoint, an impossible shape, a wrong config value) ends with a
one-line message and exit status 2; unknown ``--config.*`` fields are rejected by the flag
parser (exit status 1).
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from artv_jax import xla_flags

MODES = ("train", "sample", "train_and_sample", "eval", "convert")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training/sampling config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_string("src", None, "convert: PyTorch SD checkpoint (folder or single file).")
flags.DEFINE_string("dst", None, "convert: output folder.")
flags.DEFINE_string("config_from", None,
                    "convert: network configs for a single-file checkpoint (preset or folder).")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process runs without SLURM/TPU auto-detection: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
flags.DEFINE_integer("heartbeat_timeout", 100,
                     "Multi-process runs: seconds without a heartbeat after which a process "
                     "counts as dead and the others stop with an error naming it.")


class UsageError(Exception):
  """Bad input from the user: reported in one line, exit status 2."""


def run(argv) -> None:
  del argv
  if FLAGS.mode == "convert":
    from artv_jax import convert
    if not FLAGS.src or not FLAGS.dst:
      raise UsageError("--mode=convert needs --src and --dst.")
    convert.convert(FLAGS.src, FLAGS.dst, config_from=FLAGS.config_from)
    return
  if FLAGS.config is None or FLAGS.workdir is None:
    raise UsageError(f"--mode={FLAGS.mode} needs --config and --workdir.")

  from artv_jax import parallel
  xla_flags.use_cpu_flags()
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, heartbeat_timeout=FLAGS.heartbeat_timeout)
  from artv_jax import train
  if FLAGS.mode in ("train", "train_and_sample"):
    state = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if int(state.step) < FLAGS.config.train.num_steps:  # Preempted: checkpointed, now exit.
      return
  if FLAGS.mode in ("sample", "train_and_sample"):
    from artv_jax import generate
    generate.sample_from_workdir(FLAGS.config, FLAGS.workdir)
  if FLAGS.mode == "eval":
    from artv_jax import evaluate
    evaluate.evaluate(FLAGS.config, FLAGS.workdir)


def parse_flags(argv):
  """absl flag parsing that reports a bad ``--config.*`` override in one line, exit status 1."""
  try:
    return FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"error: bad flag: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv) -> None:
  try:
    run(argv)
  except (UsageError, ValueError, FileNotFoundError, FloatingPointError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
