"""The SuTI method in plain torch, diffusers, open_clip and pyarrow. Never imports ray, hydra or omegaconf."""
