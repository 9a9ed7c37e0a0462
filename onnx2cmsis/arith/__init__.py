"""Integer arithmetic, bit-exact with CMSIS-NN and TFLite: the quantization rules (scales, zero
points, multipliers and shifts, requantization, saturation), gemmlowp's fixed-point functions and
the 16x8 lookup tables. Below the op handlers, which compute with it; imports only the IR."""
