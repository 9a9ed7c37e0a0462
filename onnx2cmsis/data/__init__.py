"""Calibration and test samples: arrays in memory, .npy/.npz files read a block at a time, and the
samples of a model with several inputs. Below everything that runs a model on them."""
