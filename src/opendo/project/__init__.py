"""A project, loaded and served: its config (``opendo.toml``), the loader that imports its
Worker module and builds its ``Runtime``, and the server process — the one place that picks the
storage driver, placement and forwarder for the mode the server runs in."""
