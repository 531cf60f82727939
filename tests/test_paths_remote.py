"""User files on gs://: every reader and writer that does not go through orbax or TFDS, on an
in-memory stand-in for Cloud Storage (orbax, TFDS and tensorstore reach the real network)."""
import csv
import io
import json
import os
import types

from etils import epath
from etils.epath import gpath
import fsspec
from fsspec.implementations.memory import MemoryFileSystem
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from artv_jax import evaluate, paths, video_writer
from artv_jax.checkpoints import pretrained, sources
from artv_jax.data import precompute, tfds_webvid, video_io, word_tokenizer
from artv_jax.eval import mask_trace, report
from artv_jax.eval.frechet import FeatureStats
from tests.checkpoints import tiny_sd
from tests.data.test_tfds_webvid import TINY, write_webvid_manual_dir
from tests.eval.test_clip_score import tiny_clip  # noqa: F401 (fixture)
from tests.eval.test_report import RESULTS
from tests.test_video_writer import colour_frames


class FakeGCS(MemoryFileSystem):
  """gs:// in memory, with its own store and gcsfs' names ("bucket/key", no leading slash)."""
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return path.rstrip("/")


@pytest.fixture
def gcs(monkeypatch):
  """An empty fake bucket, gs://bucket, reached by epath through fsspec."""
  # epath asks fsspec for "gcs" when EPATH_USE_TF is off, and reads the variable once per
  # process (a functools.cache), hence the cache_clear on both sides.
  monkeypatch.setenv("EPATH_USE_TF", "0")
  fsspec.register_implementation("gcs", FakeGCS, clobber=True)
  fsspec.register_implementation("gs", FakeGCS, clobber=True)
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = [""]
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  yield epath.Path("gs://bucket")
  FakeGCS.store.clear()
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def names(folder: epath.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


def test_the_fake_bucket_is_reached_through_fsspec(gcs):
  (gcs / "a.txt").write_text("x")
  assert list(FakeGCS.store) == ["bucket/a.txt"]


def test_an_atomic_write_leaves_only_the_destination(gcs):
  paths.write_atomic(gcs / "out" / "r.json", "{}")
  assert names(gcs / "out") == ["r.json"]
  assert (gcs / "out" / "r.json").read_text() == "{}"


def test_json_written_twice_is_replaced(gcs):
  video_writer.write_json(gcs / "sample.json", {"complete": False})
  video_writer.write_json(gcs / "sample.json", {"complete": True})
  assert json.loads((gcs / "sample.json").read_text()) == {"complete": True}


def test_video_round_trip(gcs):
  frames = colour_frames(12)
  video_io.write_video(gcs / "clips" / "a.mp4", frames, fps=8)
  assert names(gcs / "clips") == ["a.mp4"]
  decoded, fps = video_io.read_video("gs://bucket/clips/a.mp4", height=16, width=16)
  assert decoded.shape == frames.shape and fps == pytest.approx(8.0)
  assert np.abs(decoded.astype(np.float32) - frames).mean() < 4.0  # H.264 is lossy.


def test_a_missing_video_says_no_such_file(gcs):
  with pytest.raises(video_io.VideoReadError, match="no such file") as error:
    video_io.read_video("gs://bucket/missing.mp4", height=16, width=16)
  assert error.value.path == "gs://bucket/missing.mp4"


def test_video_writer_outputs_land_in_the_bucket(gcs):
  out = gcs / "sample"
  for first, n in ((0, 16), (16, 8)):
    video_writer.write_segment(out, first, colour_frames(n, first), fps=8)
  assert [first for first, _ in video_writer.list_segments(out)] == [0, 16]
  files = video_writer.finalize_video(out, fps=8, contact_sheet_every=4)
  video_writer.write_json(out / "sample.json", {"files": files})

  assert files == {key: f"gs://bucket/sample/{name}"
                   for key, name in video_writer.OUTPUT_FILES.items()}
  assert names(out) == ["chunks", "contact_sheet.png", "sample.json", "video.gif", "video.mp4"]
  assert names(out / video_writer.SEGMENT_DIR) == ["00000000.mp4", "00000016.mp4"]
  indices, frames = video_writer.read_every_nth_frame(files["video"], 1)
  assert indices == list(range(24)) and frames[0].shape == (16, 16, 3)
  gif = iio.imread(epath.Path(files["gif"]).read_bytes(), index=None, extension=".gif")
  assert gif.shape[:3] == (24, 16, 16)
  sheet = iio.imread(epath.Path(files["contact_sheet"]).read_bytes(), extension=".png")
  assert sheet.shape == (12 + 16 + 2, 6 * (16 + 2), 3)  # Frames 0, 4, ..., 20.
  assert json.loads((out / "sample.json").read_text()) == {"files": files}

  video_writer.discard_segments(out, from_frame=16)
  assert names(out / video_writer.SEGMENT_DIR) == ["00000000.mp4"]


def test_word_tokenizer_round_trip(gcs):
  word_tokenizer.write_word_tokenizer(["a red ball bounces", "a blue cube"], gcs / "tokenizer",
                                      max_length=8)
  assert names(gcs / "tokenizer") == ["merges.txt", "tokenizer_config.json", "vocab.json"]
  tokenizer = pretrained.load_tokenizer(gcs / "tokenizer")
  assert tokenizer.model_max_length == 8
  assert len(tokenizer("a red ball bounces")["input_ids"]) == 6  # Start, 4 words, end.


def test_webvid_reads_a_manual_dir_in_the_bucket(gcs, tmp_path):
  written = write_webvid_manual_dir(os.fspath(tmp_path / "manual"))
  paths.copy_tree(tmp_path / "manual", gcs / "manual")
  # TFDS itself would write to the real gs://; the data_dir stays local.
  builder = tfds_webvid.ArtvWebvid(data_dir=tmp_path / "tfds", config=TINY)
  generators = builder._split_generators(  # pylint: disable=protected-access
      types.SimpleNamespace(manual_dir=gcs / "manual"))
  assert set(generators) == {"train"}
  examples = dict(generators["train"])
  assert set(examples) == set(written)
  for video_id, frames in written.items():
    assert examples[video_id]["frames"].shape == frames[:TINY.max_frames].shape
  skipped = dict(builder.skipped_videos["train"])
  assert all(path.startswith("gs://bucket/manual/") for path in skipped)
  assert sorted((os.path.basename(path), reason) for path, reason in skipped.items()) == [
      ("1000.mp4", "duplicate video id"), ("666.mp4", "unreadable"), ("777.mp4", "missing"),
      ("888.mp4", "too short")]


def test_webvid_plain_csv_paths_are_relative_to_it_or_uris(gcs):
  rows = [["path", "caption"], ["clips/a.mp4", "relative"], ["gs://other/b.mp4", "a URI"]]
  text = io.StringIO()
  csv.writer(text).writerows(rows)
  (gcs / "manual").mkdir(parents=True)
  (gcs / "manual" / "train.csv").write_text(text.getvalue())
  rows = tfds_webvid._read_rows(gcs / "manual" / "train.csv")  # pylint: disable=protected-access
  assert list(rows) == [("clips/a.mp4", "gs://bucket/manual/clips/a.mp4", "relative"),
                        ("gs://other/b.mp4", "gs://other/b.mp4", "a URI")]


def test_webvid_manual_dir_in_the_bucket_without_train_csv_is_named(gcs, tmp_path):
  (gcs / "manual").mkdir(parents=True)
  (gcs / "manual" / "captions.csv").write_text("path,caption\n")
  builder = tfds_webvid.ArtvWebvid(data_dir=tmp_path, config=TINY)
  with pytest.raises(FileNotFoundError, match="train.csv.*gs://bucket/manual"):
    builder._split_generators(  # pylint: disable=protected-access
        types.SimpleNamespace(manual_dir=gcs / "manual"))


def test_eval_report_and_comparison_in_the_bucket(gcs, capsys):
  files = report.write_report(gcs / "run" / "eval", {"run": RESULTS["plain AR"]},
                              name=evaluate.RESULTS, title="run", notes=["a note"])
  assert names(gcs / "run" / "eval") == ["results.json", "results.md", "results_drift_color.png"]
  assert epath.Path(files["markdown"]).read_text().endswith("\n- a note\n")
  assert json.loads(epath.Path(files["json"]).read_text())["run"]["metrics"]["following/all"] == 0.5
  assert iio.imread(epath.Path(files["drift/color"]).read_bytes(), extension=".png").ndim == 3

  compared = evaluate.compare_runs({"a": gcs / "run", "b": gcs / "run"}, gcs / "compared")
  assert list(json.loads(epath.Path(compared["json"]).read_text())) == ["a", "b"]
  assert evaluate.main(["--out", "gs://bucket/cli", "a=gs://bucket/run"]) == 0
  assert "| a |" in capsys.readouterr().out
  assert evaluate.main(["--out", "gs://bucket/cli", "x=gs://bucket/missing"]) == 2


def test_mask_plots_land_in_the_bucket(gcs):
  trace = mask_trace.MaskTrace(np.array([900, 500, 100]),
                               np.random.default_rng(0).random((3, 4, 4)), np.zeros((4, 4, 4)))
  frame = np.zeros((8, 8, 3), np.uint8)
  files = mask_trace.write_mask_plots(trace, frame, frame, gcs / "eval" / "mask")
  assert names(gcs / "eval") == ["mask_mean.png", "mask_steps.png"]
  assert iio.imread(epath.Path(files["steps"]).read_bytes(), extension=".png").ndim == 3


def test_feature_statistics_round_trip(gcs):
  stats = FeatureStats.of(np.random.default_rng(0).normal(size=(5, 3)))
  stats.save(gcs / "stats.npz")
  loaded = FeatureStats.load(gcs / "stats.npz")
  assert loaded.count == stats.count
  np.testing.assert_array_equal(loaded.scatter, stats.scatter)


def test_encoded_data_sets_are_found_in_the_bucket(gcs):
  with pytest.raises(FileNotFoundError, match="found none"):
    precompute.load_encoded(gcs / "encoded")
  for config in ("a", "b"):
    info = gcs / "encoded" / precompute.ArtvEncoded.name / config / "1.0.0" / "dataset_info.json"
    info.parent.mkdir(parents=True)
    info.write_text("{}")
  with pytest.raises(FileNotFoundError, match="gs://bucket/encoded/artv_encoded/a/1.0.0, "):
    precompute.load_encoded(gcs / "encoded")


def test_sd_source_in_the_bucket_reads_as_the_local_one(gcs, tmp_path):
  model = tiny_sd.build("sd1", tmp_path)
  paths.copy_tree(model.folder, gcs / "sd1")
  paths.copy_tree(model.single_file, gcs / "sd1.safetensors")
  pairs = [(sources.read_source(model.folder), sources.read_source(gcs / "sd1")),
           (sources.read_source(model.single_file, config_from=os.fspath(model.folder)),
            sources.read_source(gcs / "sd1.safetensors", config_from="gs://bucket/sd1"))]
  for local, remote in pairs:
    assert remote.configs == local.configs
    assert os.fspath(remote.tokenizer_dir) == "gs://bucket/sd1/tokenizer"
    for name, state_dict in local.state_dicts.items():
      assert remote.state_dicts[name].keys() == state_dict.keys()
      for key, value in state_dict.items():
        np.testing.assert_array_equal(remote.state_dicts[name][key], value)


def test_pickled_weights_are_read_from_the_bucket(gcs, tmp_path):
  torch.save({"w": torch.arange(3.0)}, tmp_path / "w.pt")
  paths.copy_tree(tmp_path / "w.pt", gcs / "w.pt")
  np.testing.assert_array_equal(sources.read_weights(gcs / "w.pt")["w"], [0.0, 1.0, 2.0])


def test_clip_folder_tokenizer_and_weights_from_the_bucket(gcs, tiny_clip):  # noqa: F811
  _, tokenizer, folder = tiny_clip
  paths.copy_tree(folder, gcs / "clip")
  remote = pretrained.load_tokenizer(gcs / "clip")
  assert remote("a red horse")["input_ids"] == tokenizer("a red horse")["input_ids"]
  assert sources.weight_files(gcs / "clip") == [gcs / "clip" / "model.safetensors"]
