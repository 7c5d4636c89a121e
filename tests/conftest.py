import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci")


def seed_for(nodeid: str) -> int:
    """A seed from a test's id, the same in every process (``hash`` of a str is salted per process)."""
    return zlib.crc32(nodeid.encode())


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test, no global seeding."""
    return np.random.default_rng(seed_for(request.node.nodeid))
