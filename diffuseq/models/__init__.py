"""The denoiser network and its builders: the transformer body, the BERT encoder config, tensor helpers, the factories."""
