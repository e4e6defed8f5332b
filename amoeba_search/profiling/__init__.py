"""Latency profiling: flows (how a model is run), the timing harness, lookup tables, predictor and roofline."""
