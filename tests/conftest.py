import os
import random

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)  # tf-keras draws the seeds of unseeded initializers from Python's random
    np.random.seed(0)
    tf.random.set_seed(0)
    yield
    import tf_keras

    tf_keras.backend.clear_session()
