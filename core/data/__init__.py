"""Records that flow between stages: parquet schemas, URI storage, the G contract, image bytes."""
