"""pytest-sglang-pd: stand up, benchmark and gate SGLang prefill/decode disaggregated clusters."""

__version__ = "0.1.0"
