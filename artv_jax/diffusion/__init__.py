"""Diffusion math as pure functions: schedules, targets, samplers, guidance."""
