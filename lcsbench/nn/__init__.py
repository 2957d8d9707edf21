"""Plain torch.nn modules: magnitude-preserving layers, the EDM2 U-Net, the patch-local wrapper."""
