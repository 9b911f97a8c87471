"""A fake OpenAI-compatible backend for demos, tests and benchmarks."""
