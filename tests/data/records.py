"""Every example of a TFDS split, decoded, read by random access (the files are array_record)."""
import numpy as np


def decoded(builder, split: str) -> list[dict]:
  """The examples of ``split`` in record order, a `Video`'s frames as one array."""
  records = builder.as_data_source(split)
  examples = [records[i] for i in range(len(records))]
  return [{**ex, "frames": np.asarray(ex["frames"])} if "frames" in ex else ex
          for ex in examples]
