"""The example scripts a user copies run on bundled data and learn."""
from __future__ import annotations

import sys

from tests.conftest import REPO


def test_hkd_image_batches_example_on_bundled_mnist(one_thread):
    sys.path.insert(0, str(REPO / "examples"))
    import hkd_image_batches

    scores = hkd_image_batches.main(["--steps", "60"])
    assert scores["last_loss"] < 0.8 * scores["first_loss"]
    assert scores["teacher"] > 0.7 and scores["student"] > 0.25  # chance is 0.1
