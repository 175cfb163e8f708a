"""GPUs of the fleet: the data model, nvidia-smi parsing, the probe and the free-GPU policy."""
