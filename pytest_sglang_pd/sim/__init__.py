"""The simulated SGLang worker: a drop-in for sglang.launch_server (docs/simulator.md)."""
