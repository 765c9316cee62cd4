"""Absorbing-state diffusion: schedules, the forward process, the MDLM bound."""
