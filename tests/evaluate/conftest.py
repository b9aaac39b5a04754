from tests.evaluate.family import family  # noqa: F401 - the seeded family, a session fixture
