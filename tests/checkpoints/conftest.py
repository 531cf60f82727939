"""Session fixtures: tiny SD checkpoints (built once) and their conversions (made once)."""
import pathlib

import pytest

from artv_jax import convert
from artv_jax.checkpoints import load_pretrained
from tests.checkpoints import tiny_sd


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
  """style -> tiny_sd.TinySD, built on first use."""
  built = {}

  def get(style: str) -> tiny_sd.TinySD:
    if style not in built:
      built[style] = tiny_sd.build(style, tmp_path_factory.mktemp(style))
    return built[style]
  return get


@pytest.fixture(scope="session")
def converted(tiny, tmp_path_factory):
  """(style, layout) -> directory written by ``python -m artv_jax.convert``, made on first use."""
  made = {}

  def get(style: str, layout: str) -> pathlib.Path:
    if (style, layout) not in made:
      dst = tmp_path_factory.mktemp("converted") / f"{style}_{layout}"
      args = tiny_sd.convert_args(tiny(style), layout) + ["--dst", str(dst)]
      assert convert.main(args) == 0
      made[style, layout] = dst
    return made[style, layout]
  return get


@pytest.fixture(scope="session")
def loaded(converted):
  """(style, layout) -> load_pretrained of the conversion, loaded on first use."""
  cache = {}

  def get(style: str, layout: str):
    if (style, layout) not in cache:
      cache[style, layout] = load_pretrained(converted(style, layout))
    return cache[style, layout]
  return get
