"""GraphPilot runtime: engine, breakable CUDA graphs, OpenAI-compatible server."""
