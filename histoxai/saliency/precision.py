"""A float32 copy of a mixed-precision model, for explanations: CAM formulas, exp() and the small
gradients that saliency and concept sensitivity compare are unsafe in float16 (and tf-keras-vis fails on
bfloat16). Shared by the explain step's engines and histoxai.saliency.concepts."""


def float32_model(model):
    """The model itself when it computes in float32, else a float32 copy with the same weights."""
    import keras

    if all(layer.compute_dtype == "float32" for layer in model.layers):
        return model

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
