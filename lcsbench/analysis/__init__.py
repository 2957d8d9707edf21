"""Pure analysis functions on the denoiser(x, sigma, cond) -> D interface, and their plots. No Lightning."""
