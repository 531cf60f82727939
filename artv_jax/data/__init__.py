"""Data: the synthetic shapes videos, TFDS builders (array_record), and the Grain pipeline.

  synthetic_shapes.py  clips with ground truth (pure numpy), held-out combinations
  tfds_synthetic.py    TFDS builder of those clips (splits "train", "heldout")
  tfds_webvid.py       TFDS builder over a WebVid-style CSV and video files
  video_io.py          read (crop, resize, resample) and write videos with ffmpeg
  pipeline.py          training tuples (target, refs, anchor, caption), resumable
  word_tokenizer.py    closed-vocabulary CLIP tokenizer for models trained from scratch
"""
