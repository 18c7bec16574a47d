"""tcp-zoo benchmark tooling: the native load generator and the harness around it."""
