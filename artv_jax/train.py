"""ART·V training: build the networks, the pure sharded ``train_step``, and the training loop.

Read top to bottom: :func:`build.build_models` (frozen VAE + text encoder, the ART·V network around
the SD UNet), :func:`make_optimizer`, :func:`create_train_state`, :func:`train_step` (one
optimiser update, possibly over several micro-batches), :func:`train_and_evaluate` (mesh,
input pipeline, checkpoints, metrics).
"""
import functools
import json
import os
import signal
import time
from typing import Any, Callable, NamedTuple, Optional

from etils import epath
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from artv_jax import build
from artv_jax import parallel
from artv_jax import paths
from artv_jax.checkpoints import training as training_checkpoints
from artv_jax.diffusion.masked_loss import masked_diffusion_loss
from artv_jax.models.vae import DiagonalGaussian


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32, optimiser updates done
  params: Any  # ART·V parameters (float32 master weights)
  opt_state: Any
  ema_params: Any  # exponential moving average of params (params itself if EMA is off)
  rng: jax.Array  # PRNG key for the next step


def trainable_labels(params: Any, trainable: str) -> Any:
  """'train' / 'freeze' per parameter.

  'unet': everything (the UNet and the new parts); 'new_and_attention': the new parts (adapter,
  noise-level embedding, conv_in/conv_out) and the UNet's attention layers.
  """
  if trainable not in ("unet", "new_and_attention"):
    raise ValueError(f"config.train.trainable '{trainable}' is not 'unet' or "
                     "'new_and_attention'.")

  def label(path: tuple[str, ...]) -> str:
    if trainable == "unet" or path[0] != "unet":
      return "train"
    in_attention = any(p.startswith(("attn1", "attn2")) for p in path)
    return "train" if in_attention or path[1] in ("conv_in", "conv_out") else "freeze"

  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: label(path) for path in flat})


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  t = config.train
  if t.lr_schedule == "constant":
    after = optax.constant_schedule(t.learning_rate)
  elif t.lr_schedule == "cosine":
    after = optax.cosine_decay_schedule(t.learning_rate, max(1, t.num_steps - t.warmup_steps))
  else:
    raise ValueError(f"config.train.lr_schedule '{t.lr_schedule}' is not 'constant' or "
                     "'cosine'.")
  warmup = optax.linear_schedule(0.0, t.learning_rate, max(1, t.warmup_steps))
  return optax.join_schedules([warmup, after], [t.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  """AdamW with warmup, global-norm clipping; frozen parameters get no update and no state."""
  t = config.train
  decay_mask = jax.tree.map(lambda p: p.ndim > 1, params)  # No decay on biases and norms.
  adamw = optax.chain(
      optax.clip_by_global_norm(t.grad_clip_norm),
      optax.adamw(learning_rate_schedule(config), b2=t.adam_b2, weight_decay=t.weight_decay,
                  mask=decay_mask))
  return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()},
                               trainable_labels(params, t.trainable))


def create_train_state(config: ml_collections.ConfigDict, models: build.Models,
                       optimizer: optax.GradientTransformation, rng: jax.Array,
                       pretrained_unet: Optional[dict] = None) -> TrainState:
  """The state before step 0. ``pretrained_unet`` is an argument, not read from ``models``,
  so that a jitted init takes the (sharded) weights as inputs rather than as constants."""
  init_rng, state_rng = jax.random.split(rng)
  params = build.init_params(config, models, init_rng, pretrained_unet)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), ema_params=params, rng=state_rng)


def encode_frames(models: build.Models, frozen: dict, frames: jax.Array,
                  rng: jax.Array) -> jax.Array:
  """frames [N, H, W, 3] in [-1, 1] -> latents [N, h, w, C] (scaled as the UNet expects)."""
  if models.vae is None:
    return frames.astype(jnp.float32)
  posterior = models.vae.apply({"params": frozen["vae"]}, frames, method="encode")
  return posterior.sample(rng) * models.vae.scaling_factor


def batch_latents(models: build.Models, frozen: dict, batch: dict,
                  rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Latents (target [B, h, w, C], refs [B, K, h, w, C], anchor [B, h, w, C]), scaled.

  Encoded from the frames by the VAE or, from a pre-encoded data set (data/precompute.py),
  drawn from the posterior moments the batch carries: the same draws either way.
  """
  suffix = "_moments" if "target_moments" in batch else ""
  target, refs, anchor = (batch[name + suffix] for name in ("target", "refs", "anchor"))
  b, k = refs.shape[:2]
  stacked = jnp.concatenate([target, anchor, refs.reshape((b * k,) + refs.shape[2:])])
  if suffix:
    latents = DiagonalGaussian.from_moments(stacked).sample(rng) * models.vae.scaling_factor
  else:
    latents = encode_frames(models, frozen, stacked, rng)
  latents = jax.lax.stop_gradient(latents)
  return latents[:b], latents[2 * b:].reshape((b, k) + latents.shape[1:]), latents[b:2 * b]


def batch_loss(params: Any, frozen: dict, batch: dict, rng: jax.Array, *, models: build.Models,
               config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """Masked diffusion loss of a batch of frames and captions.

  batch: 'target' [B, H, W, 3], 'refs' [B, K, H, W, 3], 'anchor' [B, H, W, 3] in [-1, 1],
  'tokens' [B, L] int32; or, from a pre-encoded data set, 'target_moments' [B, h, w, 2C],
  'refs_moments' [B, K, h, w, 2C], 'anchor_moments' [B, h, w, 2C], 'text_states' [B, L, D].
  """
  if config.mesh.gather_dtype == "compute":  # Gathered (and reduce-scattered) in bf16.
    params, frozen = jax.tree.map(lambda p: p.astype(build.compute_dtype(config)), (params, frozen))
  elif config.mesh.gather_dtype != "float32":
    raise ValueError(f"config.mesh.gather_dtype '{config.mesh.gather_dtype}' is not "
                     "'float32' or 'compute'.")
  params, frozen = parallel.gather_params((params, frozen), mesh)
  encode_rng, loss_rng = jax.random.split(rng)
  target, refs, anchor = batch_latents(models, frozen, batch, encode_rng)
  text_apply = lambda ids: models.text_encoder.apply({"params": frozen["text_encoder"]}, ids)
  null_text = jax.lax.stop_gradient(text_apply(jnp.asarray(models.null_tokens)[None]))[0]
  if "text_states" in batch:
    text = batch["text_states"].astype(null_text.dtype)
  else:
    text = jax.lax.stop_gradient(text_apply(batch["tokens"]))

  def predict(x_t, t, text, refs, anchor, levels, keep_refs):
    return models.artv.apply({"params": params}, x_t, t, text, refs, anchor, levels, keep_refs)

  d = config.diffusion
  return masked_diffusion_loss(
      predict, models.schedule, loss_rng, target, refs, anchor, text, null_text,
      prediction_type=models.schedule.prediction_type,
      max_ref_noise_level=d.max_ref_noise_level, p_drop_text=d.p_drop_text,
      p_drop_refs=d.p_drop_refs, p_drop_both=d.p_drop_both,
      unmasked_loss_weight=d.unmasked_loss_weight)


def train_step(state: TrainState, batch: dict, frozen: dict, *, models: build.Models,
               optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh) -> tuple[TrainState, dict]:
  """One optimiser update over ``grad_accum_steps`` micro-batches of ``batch``.

  ``metrics['finite']`` is 0 when the loss or the gradient norm is not finite; the loop then
  stops the run before that state can reach a checkpoint.
  """
  rng, step_rng = jax.random.split(state.rng)
  accum = config.train.grad_accum_steps
  # Micro-batch j takes every accum-th example, so each one stays spread over all devices.
  micro = jax.tree.map(
      lambda x: x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1), batch)
  grad_fn = jax.value_and_grad(
      functools.partial(batch_loss, models=models, config=config, mesh=mesh), has_aux=True)

  def accumulate(carry, inputs):
    grads, loss, mask_mean, unmasked = carry
    mb, mb_rng = inputs
    (l, aux), g = grad_fn(state.params, frozen, mb, mb_rng)
    grads = jax.tree.map(jnp.add, grads, g)
    return (grads, loss + l, mask_mean + aux.mask_mean, unmasked + aux.unmasked_loss), None

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  init = (zeros, 0.0, 0.0, 0.0)
  micro_rngs = jax.random.split(step_rng, accum)
  if accum == 1:
    # Inside an XLA loop, XLA:CPU's convolution gradients miss its fast (YNNPACK) kernels
    # (docs/RESULTS.md), so a single micro-batch takes no loop.
    (grads, loss, mask_mean, unmasked), _ = accumulate(
        init, jax.tree.map(lambda x: x[0], (micro, micro_rngs)))
  else:
    (grads, loss, mask_mean, unmasked), _ = jax.lax.scan(
        accumulate, init, (micro, micro_rngs), unroll=jax.default_backend() == "cpu")
  grads = jax.tree.map(lambda g: g / accum, grads)
  loss, mask_mean, unmasked = loss / accum, mask_mean / accum, unmasked / accum

  grad_norm = optax.global_norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Warmed-up decay (as diffusers' EMAModel): a 0.9999 EMA would otherwise be mostly the
  # initial weights for the first ~10k steps.
  decay = jnp.minimum(config.train.ema_decay, (1.0 + state.step) / (10.0 + state.step))
  ema = (jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
         if config.train.ema_decay > 0 else params)
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema, rng=rng)
  metrics = {"loss": loss, "grad_norm": grad_norm, "mask_mean": mask_mean,
             "unmasked_loss": unmasked, "learning_rate": learning_rate_schedule(config)(state.step),
             "finite": (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.float32)}
  return new_state, metrics


class Trainer(NamedTuple):
  """Everything a training loop needs: networks, the compiled sharded step, how to init."""
  models: build.Models
  optimizer: optax.GradientTransformation
  step_fn: Callable  # (state, global batch, frozen) -> (state, metrics), jitted and sharded
  init_state: Callable  # () -> the TrainState before step 0, laid out on the mesh
  abstract_state: TrainState  # shapes only
  state_sharding: Any
  frozen: dict  # frozen params (VAE, text encoder) placed on the mesh
  mesh: jax.sharding.Mesh


def make_trainer(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
  """Builds the networks and jit(train_step) with NamedShardings over a (data, fsdp) mesh."""
  _check_batch_config(config)
  models_rng, state_rng = build.seeds(config)
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
  models = build.build_models(config, models_rng, workdir, mesh)
  pretrained = models.pretrained_unet
  optimizer = make_optimizer(config, jax.eval_shape(
      lambda p: create_train_state(config, models, optax.identity(), state_rng, p).params,
      pretrained))
  init_fn = functools.partial(create_train_state, config, models, optimizer, state_rng)
  abstract_state = jax.eval_shape(init_fn, pretrained)

  min_size = config.mesh.min_shard_size
  state_sharding = parallel.param_sharding(mesh, abstract_state, min_size)
  frozen_params = models.frozen_params
  if config.data.precomputed_dir:  # The step never runs the VAE: keep it off the devices.
    frozen_params = {"text_encoder": frozen_params["text_encoder"]}
  frozen_sharding = parallel.param_sharding(mesh, frozen_params, min_size)
  step_fn = jit_train_step(config, models, optimizer, mesh, state_sharding, frozen_sharding)
  frozen = parallel.shard_pytree(frozen_params, frozen_sharding)
  init = jax.jit(init_fn, out_shardings=state_sharding)
  init_state = lambda: compile_everywhere(init, "init", pretrained)(pretrained)
  return Trainer(models, optimizer, step_fn, init_state, abstract_state, state_sharding, frozen,
                 mesh)


def jit_train_step(config: ml_collections.ConfigDict, models: build.Models,
                   optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                   state_sharding: Any, frozen_sharding: Any, donate: bool = True) -> Callable:
  """:func:`train_step` jitted over the mesh: (state, global batch, frozen) -> (state,
  metrics); ``donate``: the new state reuses the old one's memory."""
  return jax.jit(
      functools.partial(train_step, models=models, optimizer=optimizer, config=config,
                        mesh=mesh),
      in_shardings=(state_sharding, parallel.batch_sharding(mesh), frozen_sharding),
      out_shardings=(state_sharding, parallel.replicated(mesh)),
      donate_argnums=(0,) if donate else ())


def to_model_batch(trainer: Trainer, batch: dict) -> dict:
  """A host-local pipeline batch -> the global batch the train step takes (captions tokenized)."""
  if "text_states" in batch:  # Pre-encoded (data/precompute.py).
    batch = {key: batch[key] for key in ("target_moments", "refs_moments", "anchor_moments",
                                         "text_states")}
  else:
    batch = {"target": batch["target"], "refs": batch["refs"], "anchor": batch["anchor"],
             "tokens": build.tokenize(trainer.models.tokenizer, batch["caption"])}
  return parallel.host_local_to_global(batch, trainer.mesh)


def check_precomputed(builder, models: build.Models, config: ml_collections.ConfigDict) -> None:
  """The pre-encoded data set (``config.data.precomputed_dir``) fits this run's VAE."""
  metadata = builder.info.metadata
  if models.vae is None:
    raise ValueError("config.data.precomputed_dir holds VAE latents, but "
                     "config.model.latent_space is 'pixels'; clear one of them.")
  size = build.latent_size(models, config.data.resolution)
  wanted = (size, size, 2 * models.vae.latent_channels), models.vae.scaling_factor
  found = builder.info.features["moments"].shape[1:], metadata["scaling_factor"]
  if found != wanted:
    raise ValueError(
        f"config.data.precomputed_dir={config.data.precomputed_dir} ({metadata['source']} "
        f"encoded by {metadata['pretrained']}) has moments {found[0]} and scaling factor "
        f"{found[1]}; this run needs {wanted[0]} and {wanted[1]}. Rerun python -m "
        f"artv_jax.data.precompute with --pretrained={config.model.pretrained} and "
        f"--resolution={config.data.resolution}.")


def _check_batch_config(config: ml_collections.ConfigDict) -> None:
  t = config.train
  per_process = t.batch_size // jax.process_count()
  if t.batch_size % jax.process_count() or per_process % t.grad_accum_steps:
    raise ValueError(f"config.train.batch_size={t.batch_size} must be divisible by the process "
                     f"count ({jax.process_count()}) x grad_accum_steps ({t.grad_accum_steps}).")
  if (t.batch_size // t.grad_accum_steps) % jax.device_count():
    raise ValueError(f"micro-batch {t.batch_size // t.grad_accum_steps} is not divisible by "
                     f"the {jax.device_count()} devices.")


class _StopRequest:
  """A SIGTERM or preemption notice, turned into one stop step for every process.

  In a distributed run JAX's preemption service catches SIGTERM (and a TPU VM's maintenance
  notice) on any host and the coordination service picks a step at which every process's
  :meth:`reached` turns true, so all of them save the same checkpoint and exit alike. A lone
  process (no distributed service) catches SIGTERM itself.
  """

  def __init__(self):
    self.distributed = jax.distributed.is_initialized()
    self.requested = False
    if not self.distributed:  # A handler here would hide SIGTERM from JAX's service.
      try:
        signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # Not the main thread (e.g. inside a test runner thread).
        pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    """Whether to checkpoint ``step`` and stop (the same answer on every process)."""
    if self.distributed:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


def restore_state(manager: ocp.CheckpointManager, trainer: Trainer, step: int,
                  data=None) -> TrainState:
  """The state of checkpoint ``step``, laid out on the trainer's mesh; with ``data``, the
  input iterator is moved to the checkpoint's position too."""
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        trainer.abstract_state, trainer.state_sharding)
  if data is not None:
    from artv_jax.data import pipeline  # Imported here: the step imports without TF and Grain.
    data = pipeline.restore_args(data)
  return training_checkpoints.restore_state(manager, step, target, data)


# Seconds every process waits for the others to compile a program before its first run.
COMPILE_WAIT_S = 3600


def compile_everywhere(jitted: Callable, name: str, *args) -> Callable:
  """``jitted`` compiled for ``args``, once every process has compiled it: the first run's
  collectives then do not wait on a peer still compiling (gloo gives up after 30 s)."""
  compiled = jitted.lower(*args).compile()
  parallel.wait_for_all(f"artv_jax: {name} compiled", COMPILE_WAIT_S)
  return compiled


def restore_or_init(manager: ocp.CheckpointManager, trainer: Trainer, data) -> TrainState:
  """The latest checkpoint (state, and ``data`` moved to its position), else a fresh state."""
  step = manager.latest_step()
  if step is None:
    return trainer.init_state()
  state = restore_state(manager, trainer, step, data)
  logging.info("Resumed from step %d.", step)
  return state


class MetricsLogger:
  """Console, TensorBoard event files and ``metrics.jsonl`` (process 0 only).

  ``metrics.jsonl`` is rewritten whole (atomically) at each checkpoint: object stores have no
  append, and a resumed run then finds exactly the lines up to its checkpoint, with no
  duplicates of the steps it redoes.
  """

  def __init__(self, workdir: str, start_step: int):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    import tensorflow as tf  # Event files; TF is already a dependency of the input pipeline.
    self._tf = tf
    self._writer = tf.summary.create_file_writer(os.fspath(epath.Path(workdir) / "tensorboard"))
    self._path = epath.Path(workdir) / "metrics.jsonl"
    lines = self._path.read_text().splitlines() if self._path.exists() else []
    self._lines = [line for line in lines if json.loads(line)["step"] <= start_step]

  def scalars(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    with self._writer.as_default():
      for name, value in metrics.items():
        self._tf.summary.scalar(name, value, step=step)
    self._lines.append(json.dumps({"step": step, **metrics}))
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

  def flush(self) -> None:
    if self.enabled:
      self._writer.flush()
      paths.write_atomic(self._path, "".join(line + "\n" for line in self._lines))


def _raise_if_not_finite(metrics: Optional[dict], step: int,
                         manager: ocp.CheckpointManager) -> None:
  """Stops the run if the update that made step ``step`` had a non-finite loss/gradient."""
  if metrics is None or bool(metrics["finite"]):
    return
  metrics = jax.device_get(metrics)
  raise FloatingPointError(
      f"non-finite loss ({float(metrics['loss'])}) or gradient norm "
      f"({float(metrics['grad_norm'])}) at step {step}: the run stopped and the last "
      f"good checkpoint (step {manager.latest_step()}) is kept. Lower the learning rate or "
      "check the data.")


def prepare_dataset(config: ml_collections.ConfigDict, workdir: str) -> list:
  """The TFDS builders of ``config.data`` (one, or the parts of a WebVid built in parallel):
  the pre-encoded data set if set; else built where missing, by process 0 (or, for WebVid
  in ``webvid_parts`` parts, part i by process i % process_count) while the others wait for
  as long as the build takes; then opened by all."""
  from artv_jax.data import pipeline
  d = config.data
  if d.precomputed_dir:
    from artv_jax.data import precompute
    return [precompute.load_encoded(d.precomputed_dir)]
  if d.webvid_parts < 1 or (d.webvid_parts > 1 and d.dataset != "webvid"):
    raise ValueError(f"config.data.webvid_parts={d.webvid_parts}: it splits the build of "
                     f"'webvid' into parts, at least 1 (dataset is {d.dataset!r}).")
  build = functools.partial(
      pipeline.make_builder, d.dataset, d.data_dir or os.fspath(epath.Path(workdir) / "tfds"),
      resolution=d.resolution, manual_dir=d.manual_dir or None, variant=d.variant)
  if d.webvid_parts == 1:
    return [parallel.first_on_process_0("data set prepared", build)]
  parts = range(d.webvid_parts)
  for part in parts[jax.process_index()::jax.process_count()]:
    build(part=(part, d.webvid_parts))
  parallel.mark_done("data set parts prepared")
  parallel.wait_until_done("data set parts prepared", range(jax.process_count()))
  return [build(part=(part, d.webvid_parts)) for part in parts]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains ART·V, resuming from the latest checkpoint in ``workdir``; returns the final state."""
  from tqdm import tqdm
  from artv_jax.data import pipeline

  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  trainer = make_trainer(config, workdir)
  d = config.data
  builders = prepare_dataset(config, workdir)
  if d.precomputed_dir:
    check_precomputed(builders[0], trainer.models, config)
  data = pipeline.make_train_iterator(
      builders, global_batch_size=config.train.batch_size,
      num_reference_frames=config.model.num_ref_frames, min_stride=d.min_stride,
      max_stride=d.max_stride, max_anchor_strides=d.max_anchor_strides or None,
      seed=config.seed, worker_count=d.worker_count)
  manager = training_checkpoints.checkpoint_manager(workdir, config.train.keep_checkpoints)
  state = restore_or_init(manager, trainer, data)

  stop = _StopRequest()
  start_step = int(jax.device_get(state.step))
  logger = MetricsLogger(workdir, start_step)
  num_steps = config.train.num_steps
  progress = tqdm(total=num_steps, initial=start_step, disable=jax.process_index() != 0,
                  desc="train", unit="step")
  last_time, last_step = time.time(), start_step
  step, pending = start_step, None
  batch = to_model_batch(trainer, next(data)) if step < num_steps else None
  step_fn = (compile_everywhere(trainer.step_fn, "train step", state, batch, trainer.frozen)
             if batch is not None else None)
  try:
    while step < num_steps:
      state, metrics = step_fn(state, batch, trainer.frozen)
      # Checked one step late, so the device already has the next step queued.
      _raise_if_not_finite(pending, step, manager)
      step, pending = step + 1, metrics
      progress.update(1)
      preempted = stop.reached(step)
      if step % config.train.log_every == 0 or step == num_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics.pop("finite")
        now = time.time()
        metrics["steps_per_sec"] = (step - last_step) / (now - last_time)
        metrics["examples_per_sec"] = metrics["steps_per_sec"] * config.train.batch_size
        last_time, last_step = now, step
        logger.scalars(step, metrics)
      if step % config.train.checkpoint_every == 0 or step == num_steps or preempted:
        _raise_if_not_finite(pending, step, manager)
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=pipeline.save_args(data)))
        logger.flush()
      if preempted:
        logging.warning("Preemption requested: checkpointed step %d and stopping.", step)
        break
      if step < num_steps:  # After the save: the checkpoint holds the data position of step.
        batch = to_model_batch(trainer, next(data))
    _raise_if_not_finite(pending, step, manager)
  finally:
    manager.wait_until_finished()
    progress.close()
    logger.flush()
  return state
