"""`clone_scope` across threads: each thread copies its own model's Lambdas, the hook is removed
when the last scope closes, and a thread without a scope still gets Keras's safe-mode refusal."""

import threading

import numpy as np
import pytest
from tf_keras.src.saving import serialization_lib

from lstm_transforms._keras import keras
from lstm_transforms.transforms import clone_scope

L = keras.layers


def _scaled(k):
    inputs = keras.Input((3,))
    return keras.Model(inputs, L.Lambda(lambda t: t * k, name="scale")(inputs))  # same name and code, other k


def test_two_threads_clone_their_own_lambdas_at_the_same_time():
    stock = keras.layers.Lambda.__dict__["from_config"]
    models = {2.0: _scaled(2.0), 3.0: _scaled(3.0)}
    both_open, results, errors = threading.Barrier(3), {}, []

    def clone(k):
        try:
            with clone_scope(models[k]), serialization_lib.SafeModeScope(True):
                both_open.wait(timeout=30)
                copy = keras.Model.from_config(models[k].get_config())
                results[k] = copy(np.ones((1, 3), np.float32)).numpy()
                both_open.wait(timeout=30)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            both_open.abort()

    threads = [threading.Thread(target=clone, args=(k,)) for k in models]
    for t in threads:
        t.start()
    both_open.wait(timeout=30)
    # Meanwhile, here (no scope of this thread): the stock path, which refuses Python bytecode.
    with serialization_lib.SafeModeScope(True), pytest.raises(ValueError, match="Python `lambda`"):
        keras.Model.from_config(models[2.0].get_config())
    both_open.wait(timeout=30)
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    np.testing.assert_array_equal(results[2.0], 2.0)
    np.testing.assert_array_equal(results[3.0], 3.0)
    assert keras.layers.Lambda.__dict__["from_config"] is stock
