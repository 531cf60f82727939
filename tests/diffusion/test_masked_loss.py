"""The masked diffusion objective, its condition dropouts and reference noise augmentation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from artv_jax.diffusion import masked_loss
from artv_jax.diffusion.schedule import make_schedule, predict_x0_and_eps, q_sample

SCHEDULE = make_schedule()
SHAPE = (4, 8, 8, 4)


def _data(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  target, ref, anchor = (jax.random.normal(k, SHAPE) for k in keys[:3])
  text = jax.random.normal(keys[3], (4, 5, 16))
  null_text = jax.random.normal(keys[4], (5, 16))
  return target, ref, anchor, text, null_text


def _loss(predict, prediction_type="epsilon", **kw):
  target, ref, anchor, text, null_text = _data()
  options = dict(prediction_type=prediction_type, max_ref_noise_level=200, p_drop_text=0.1,
                 p_drop_refs=0.1, p_drop_both=0.05)
  options.update(kw)
  return masked_loss.masked_diffusion_loss(predict, SCHEDULE, jax.random.PRNGKey(7), target,
                                           ref[:, None], anchor, text, null_text, **options)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_mask_of_ones_is_the_plain_diffusion_loss(prediction_type):
  seen = {}

  def predict(x_t, t, text, refs, anchor, levels, keep_refs):
    seen.update(x_t=x_t, t=t)
    return jnp.tanh(x_t), jnp.ones(x_t.shape[:3] + (1,))

  loss, aux = _loss(predict, prediction_type)
  target = _data()[0]
  # Recover the noise the loss drew from x_t = α x0 + σ ε, and rebuild the plain loss.
  alpha = jnp.sqrt(SCHEDULE.alphas_cumprod[seen["t"]])[:, None, None, None]
  sigma = jnp.sqrt(1 - SCHEDULE.alphas_cumprod[seen["t"]])[:, None, None, None]
  eps = (seen["x_t"] - alpha * target) / sigma
  goal = eps if prediction_type == "epsilon" else alpha * eps - sigma * target
  np.testing.assert_allclose(loss, jnp.mean((goal - jnp.tanh(seen["x_t"]))**2), rtol=1e-4)
  np.testing.assert_allclose(aux.unmasked_loss, loss, rtol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_mask_of_zeros_copies_the_reference(prediction_type):
  target, ref, _, _, _ = _data()
  t = jnp.array([1, 100, 500, 999])
  x_t = q_sample(SCHEDULE, target, t, jax.random.normal(jax.random.PRNGKey(3), SHAPE))
  output = jax.random.normal(jax.random.PRNGKey(4), SHAPE)
  mixed = masked_loss.masked_prediction(SCHEDULE, output, jnp.zeros(SHAPE[:3] + (1,)), x_t,
                                        ref, t, prediction_type)
  x0, _ = predict_x0_and_eps(SCHEDULE, mixed, x_t, t, prediction_type)
  np.testing.assert_allclose(x0, ref, atol=2e-3)
  np.testing.assert_allclose(
      mixed, masked_loss.reference_prediction(SCHEDULE, x_t, ref, t, prediction_type))


def test_loss_is_zero_when_the_target_is_the_reference_and_the_mask_is_zero():
  target, _, anchor, text, null_text = _data()

  def predict(x_t, t, text, refs, anchor, levels, keep_refs):
    return jnp.zeros_like(x_t), jnp.zeros(x_t.shape[:3] + (1,))

  loss, _ = masked_loss.masked_diffusion_loss(
      predict, SCHEDULE, jax.random.PRNGKey(0), target, target[:, None], anchor, text,
      null_text, prediction_type="epsilon", max_ref_noise_level=0, p_drop_text=0,
      p_drop_refs=0, p_drop_both=0)
  assert float(loss) < 1e-6


def test_unmasked_loss_weight_adds_the_network_s_own_loss():
  def predict(x_t, t, text, refs, anchor, levels, keep_refs):
    return jnp.tanh(x_t), jnp.full(x_t.shape[:3] + (1,), 0.3)

  masked, aux = _loss(predict)
  weighted, weighted_aux = _loss(predict, unmasked_loss_weight=0.5)
  assert float(aux.unmasked_loss) > 0
  np.testing.assert_allclose(weighted, masked + 0.5 * aux.unmasked_loss, rtol=1e-6)
  np.testing.assert_allclose(weighted_aux.unmasked_loss, aux.unmasked_loss)


def test_unmasked_loss_trains_the_network_where_the_mask_is_closed():
  def loss_of(scale, weight):
    def predict(x_t, t, text, refs, anchor, levels, keep_refs):
      closed = jnp.zeros(x_t.shape[:3] + (1,))
      return scale * x_t, jnp.where(keep_refs[:, None, None, None], closed, 1.0)
    return _loss(predict, p_drop_refs=0.0, p_drop_both=0.0, p_drop_text=0.0,
                 unmasked_loss_weight=weight)[0]

  assert float(jax.grad(loss_of)(0.5, 0.0)) == 0.0  # M = 0: the output gets no gradient
  assert abs(float(jax.grad(loss_of)(0.5, 1.0))) > 1e-3


def test_gradients_reach_the_mask_head():
  def loss_of(mask_logit):
    def predict(x_t, t, text, refs, anchor, levels, keep_refs):
      mask = jax.nn.sigmoid(mask_logit) * jnp.ones(x_t.shape[:3] + (1,))
      return jnp.zeros_like(x_t), jnp.where(keep_refs[:, None, None, None], mask, 1.0)
    return _loss(predict)[0]

  grad = jax.grad(loss_of)(jnp.float32(0.0))
  assert np.isfinite(grad) and abs(float(grad)) > 1e-4


def test_condition_dropout_rates_are_disjoint_events():
  keep = masked_loss.sample_cond_dropout(jax.random.PRNGKey(0), 200_000, 0.1, 0.2, 0.05)
  text, refs = np.asarray(keep.keep_text), np.asarray(keep.keep_refs)
  assert np.mean(~text & refs) == pytest.approx(0.1, abs=0.005)
  assert np.mean(text & ~refs) == pytest.approx(0.2, abs=0.005)
  assert np.mean(~text & ~refs) == pytest.approx(0.05, abs=0.005)
  with pytest.raises(ValueError, match="sum to"):
    masked_loss.sample_cond_dropout(jax.random.PRNGKey(0), 4, 0.5, 0.5, 0.5)


def test_dropped_text_uses_the_null_embedding_and_dropped_refs_reach_the_network():
  target, ref, anchor, text, null_text = _data()
  seen = {}

  def predict(x_t, t, text_in, refs, anchor_in, levels, keep_refs):
    seen.update(text=text_in, keep_refs=keep_refs, levels=levels, refs=refs)
    return jnp.zeros_like(x_t), jnp.ones(x_t.shape[:3] + (1,))

  _loss(predict, p_drop_text=0, p_drop_refs=0, p_drop_both=1.0)
  np.testing.assert_array_equal(seen["text"], jnp.broadcast_to(null_text, text.shape))
  assert not np.asarray(seen["keep_refs"]).any()


def test_reference_augmentation_noises_to_the_sampled_level():
  refs = jax.random.normal(jax.random.PRNGKey(0), (512, 2, 4, 4, 1))
  noised, levels = masked_loss.augment_references(SCHEDULE, jax.random.PRNGKey(1), refs, 200)
  assert noised.shape == refs.shape and levels.shape == (512,)
  assert 0 <= int(levels.min()) and int(levels.max()) <= 200 and int(levels.max()) > 150
  unchanged, zero = masked_loss.augment_references(SCHEDULE, jax.random.PRNGKey(1), refs, 0)
  np.testing.assert_array_equal(zero, 0)
  alpha = np.sqrt(np.asarray(SCHEDULE.alphas_cumprod)[0])
  sigma = np.sqrt(1 - np.asarray(SCHEDULE.alphas_cumprod)[0])
  np.testing.assert_allclose(np.std(unchanged - alpha * refs) / sigma, 1.0, rtol=0.05)
