"""DreamBench (DreamBooth, CVPR 2023): the dataset loader, its metrics (DINO, CLIP-I, CLIP-T), the report."""
