"""tcp-zoo servers: one sans-IO protocol core behind many concurrency models.

Each backend is a module started on its own (``python -m servers.<module>``);
``python -m servers`` lists them from :mod:`servers.registry`.
"""
