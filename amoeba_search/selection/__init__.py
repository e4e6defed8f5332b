"""Knowledge-preserving subnet selection: which layers (depth) and channels (width) to keep, scored on calibration data."""
