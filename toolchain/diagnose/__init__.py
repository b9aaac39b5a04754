"""Where an artifact departs from eager: the first diverging module and source line, and graph bisection."""

__all__: list[str] = []
