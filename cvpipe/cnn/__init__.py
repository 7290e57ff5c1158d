"""The CNN baseline: a compact residual network trained with the data on the device.

``train_cnn_model(dataset, model_dir, CNNConfig(...))`` trains, selects on validation,
scores train/val/test and saves a kind "cnn" model that :func:`cvpipe.models.load_model`
serves. Importing this package imports torch.
"""

# OMP_WAIT_POLICY is set in cvpipe/__init__.py, before torch is first imported.

from cvpipe.cnn.config import CNNConfig, resolve_device
from cvpipe.cnn.net import NetConfig, ResNet
from cvpipe.cnn.persist import CNNPredictor
from cvpipe.cnn.train import TrainResult, checkpoint_dir_for, train_cnn, train_cnn_model

__all__ = [
    "CNNConfig",
    "CNNPredictor",
    "NetConfig",
    "ResNet",
    "TrainResult",
    "checkpoint_dir_for",
    "resolve_device",
    "train_cnn",
    "train_cnn_model",
]
