"""Absorbing-state diffusion: noise schedules and the forward (masking) process. The bound built on
them is the MDLM objective, in dlm.objectives.mdlm."""
