"""Engine: the loop on Accelerate, optimizers and schedules, callbacks, checkpoints."""
