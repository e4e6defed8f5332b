"""Search: the subnet space from a strategy file, accuracy proxies, and Optuna studies under latency targets."""
