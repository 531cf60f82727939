"""Evaluation: the synthetic drift / prompt-following benchmark and standard video metrics."""
