"""``make bench``: what the system costs — cold starts, DynamoDB round-trips per operation, the night at scale,
document rendering and API latency — each next to a baseline measured in the same run (bench/results.md)."""
