"""The reference study's networks and augmentation in Keras (TensorFlow only: imported by the Keras worker processes
of peer_keras.py and peer_keras_study.py, never beside torch). Each from-scratch network is the twin of imgclf's
(tests of the same shapes: the trainable parameter counts match imgclf's models, checked by peer_keras_study.py).
"""

import tensorflow as tf

layers = tf.keras.layers


def simple_cnn(num_classes: int = 10) -> tf.keras.Model:
    """Conv(32) → pool → Conv(64) → pool → Dense(128), BatchNorm and dropout 0.3: imgclf's simple_cnn."""
    inputs = tf.keras.Input((32, 32, 3))
    h = inputs
    for filters in (32, 64):
        h = layers.MaxPooling2D()(layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(filters, 3)(h))))
    h = layers.Dropout(0.3)(layers.Flatten()(h))
    h = layers.Dropout(0.3)(layers.Dense(128, activation="relu")(h))
    return tf.keras.Model(inputs, layers.Dense(num_classes)(h), name="simple_cnn")


def vgg10(num_classes: int = 10) -> tf.keras.Model:
    """3 × (Conv → Conv → pool) at 32/64/128 filters, then Dense(56): imgclf's vgg10."""
    inputs = tf.keras.Input((32, 32, 3))
    h = inputs
    for filters in (32, 64, 128):
        for _ in range(2):
            h = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)))
        h = layers.MaxPooling2D()(h)
    h = layers.Dropout(0.3)(layers.Flatten()(h))
    h = layers.Dropout(0.3)(layers.Dense(56, activation="relu")(h))
    return tf.keras.Model(inputs, layers.Dense(num_classes)(h), name="vgg10")


def resnet20(num_classes: int = 10) -> tf.keras.Model:
    """The reference notebook's ResNet-20 (v1: 3 stages of 3 basic blocks, 16/32/64 filters, L2 1e-4)."""
    l2 = tf.keras.regularizers.l2(1e-4)

    def conv(x, filters, stride=1):
        return layers.Conv2D(filters, 3, stride, "same", kernel_initializer="he_normal", kernel_regularizer=l2)(x)

    inputs = tf.keras.Input((32, 32, 3))
    h = layers.ReLU()(layers.BatchNormalization()(conv(inputs, 16)))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage and not block else 1
            r = layers.ReLU()(layers.BatchNormalization()(conv(h, filters, stride)))
            r = layers.BatchNormalization()(conv(r, filters))
            if stride != 1:
                h = layers.Conv2D(filters, 1, stride, kernel_regularizer=l2)(h)
            h = layers.ReLU()(layers.add([h, r]))
    outputs = layers.Dense(num_classes)(layers.GlobalAveragePooling2D()(h))
    return tf.keras.Model(inputs, outputs, name="resnet20")


def efficientnetv2_b0(side: int, num_classes: int = 10, dropout: float = 0.2) -> tuple[tf.keras.Model, tf.keras.Model]:
    """(model, backbone): the reference's transfer network — 32-px images resized to ``side`` in the model,
    EfficientNetV2-B0 without its top (BatchNorm in inference mode), dropout and a new dense head. Weights are random:
    no hub is reachable here, and the time of a step does not depend on the weights' values."""
    backbone = tf.keras.applications.EfficientNetV2B0(
        include_top=False, weights=None, input_shape=(side, side, 3), pooling="avg", include_preprocessing=True
    )
    inputs = tf.keras.Input((32, 32, 3))
    h = layers.Resizing(side, side)(inputs)
    h = backbone(h, training=False)
    outputs = layers.Dense(num_classes)(layers.Dropout(dropout)(h))
    return tf.keras.Model(inputs, outputs, name=f"efficientnetv2_b0_{side}"), backbone


def reference_augmentation() -> tf.keras.Sequential:
    """The reference notebook's augmentation: rotation ±15°, zoom ±10%, shifts ±10%, horizontal flip."""
    return tf.keras.Sequential(
        [
            layers.RandomRotation(15 / 360),
            layers.RandomZoom(0.1),
            layers.RandomTranslation(0.1, 0.1),
            layers.RandomFlip("horizontal"),
        ]
    )
