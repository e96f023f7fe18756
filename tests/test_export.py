"""The SavedModel export (histoxai/model_registry/export.py): what TensorFlow Serving loads gives the
`.keras` model's outputs, augmentation switched off, without this project's code."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from histoxai import model as models
from histoxai.errors import InputError
from histoxai.model_registry.export import SERVING_SIGNATURE, export_saved_model
from tests.test_model import small_config


def test_export_serves_what_the_keras_model_predicts(tmp_path):
    # every augmentation on: a plain Keras export would flip images at serving time
    config = small_config(augment_flip=True, augment_rot90=True, augment_rotation_degrees=10)
    net = models.build_model(config, target_means={"MD": 1.0, "FA": 0.3})
    net.save(tmp_path / "model.keras")
    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model" / "stale.txt").write_text("from an earlier export")

    dest = export_saved_model(tmp_path / "model.keras", tmp_path / "saved_model")
    assert dest == tmp_path / "saved_model" and (dest / "saved_model.pb").is_file()
    assert not (dest / "stale.txt").exists() and not list(tmp_path.glob(".saved_model.partial-*"))

    served = tf.saved_model.load(str(dest))
    signature = served.signatures[SERVING_SIGNATURE]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.shape.as_list() == [None, 32, 32, 3] and spec.dtype == tf.float32
    images = np.random.default_rng(3).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    expected = net.predict(images, verbose=0)
    for _ in range(2):  # the same answer every time: no random augmentation left in the graph
        outputs = signature(tf.constant(images))
        assert set(outputs) == {"MD", "FA"}
        for target in ("MD", "FA"):
            np.testing.assert_allclose(outputs[target].numpy(), expected[target], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served.serve(tf.constant(images))["MD"].numpy(), expected["MD"], rtol=1e-5)


def test_export_refuses_what_is_not_a_keras_model(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"model.keras: not a loadable .keras model"):
        export_saved_model(tmp_path / "model.keras", tmp_path / "saved_model")
    with pytest.raises(InputError, match=r"nowhere.keras: not found"):
        export_saved_model(tmp_path / "nowhere.keras", tmp_path / "saved_model")
    assert not (tmp_path / "saved_model").exists()
