"""LightningModules: global EDM2, patch-local EDM2, object-count judge."""
