"""The paper's ablations on the synthetic shapes data, each adding one idea to the one before:

  plain_ar   auto-regressive next-frame diffusion: no reference noise, no mask, no anchor
  ref_noise  + reference noise augmentation (METHOD §1)
  masked     + masked diffusion (METHOD §2)
  full       + anchor frame conditioning (METHOD §3) = full ART·V = configs/demo.py

Same networks, data and training budget as configs/demo.py. benchmarks/ablations.sh trains
and evaluates all four and writes the table.
"""
