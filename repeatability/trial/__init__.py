"""One trial: the pipeline's stages (data, model, training, scoring, generation), seeds, determinism,
the 8-bit state maps and the optimizer trace."""
