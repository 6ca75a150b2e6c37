"""HTTP servers for tests and benchmarks: an OpenAI-compatible fault injector and a llama.cpp launcher."""
