"""Search: accuracy proxies, Optuna studies under latency targets over a profiled space, and the session that
opens and runs them."""

DEFAULT_STORAGE = "sqlite:///search/studies.db"
