"""Speed, measured side by side: races, `toolchain bench` and the recommended runtime per batch, model cost."""

__all__: list[str] = []
