"""The CI parity gate over many models: workers, cache, baseline, reports, executors, pytest plugin."""

__all__: list[str] = []
