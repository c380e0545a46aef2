"""The paper's baselines (SFT, GRPO through TRL) and the CPU edition's warm start."""
