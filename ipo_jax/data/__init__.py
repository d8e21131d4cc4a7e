"""Record schemas, tokenisation with chat templates, batching / bucketing."""
