"""The SuTI method: mining subject clusters, per-subject experts with the delta-CLIP filter, the apprentice."""
