"""PPNet: Kuaishou's Parameter Personalized Net (LHUC gates over a DNN tower) for CTR ranking.

TensorFlow Recommenders 0.7.7 only works with Keras 2, so ``TF_USE_LEGACY_KERAS=1`` is set here,
before any submodule can import TensorFlow; ``tf.keras`` then resolves to ``tf_keras``.
"""

import importlib.metadata
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ppnet.errors import PPNetError

__all__ = ["PPNetError"]
__version__ = importlib.metadata.version("ppnet")  # pyproject.toml holds the one version
