"""Issue 31's trained decoders: transposed convolutions in a denoising autoencoder (made by make_decoders.py)."""
