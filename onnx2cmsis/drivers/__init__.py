"""What runs a conversion's results rather than making them: `verify` (verification.py: the C built
and run on the host and on QEMU, compared with the reference and tflite-micro; evaluate.py: the
figures; stream_check.py: the stream pushes) and `inspect` (inspect_model.py: what convert will emit,
without calibration samples). Above the pipeline (api), below the CLI."""
