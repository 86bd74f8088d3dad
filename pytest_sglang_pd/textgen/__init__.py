"""Text both the load generator (bench/) and the simulator (sim/) use: the simulated model's tokenizer and
gsm8k-shaped arithmetic questions. A neutral leaf: it imports nothing else of the package."""
