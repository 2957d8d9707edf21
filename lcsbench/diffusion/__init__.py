"""EDM math: preconditioning, loss, noise levels, sampler, learning-rate schedule, power EMA."""
