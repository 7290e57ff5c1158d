"""The CNN baseline: airbench's network or a compact residual one, trained with the data on the device.

``fit_cnn(dataset, CNNConfig(...))`` trains, selects on validation and scores
train/val/test; :mod:`cvpipe.models` saves the result as a model that the API serves.
Importing this package imports torch.
"""

# OMP_WAIT_POLICY is set in cvpipe/__init__.py, before torch is first imported.

from cvpipe.cnn.config import CNNConfig
from cvpipe.cnn.net import AirbenchNet, NetConfig, ResNet, build_net
from cvpipe.cnn.persist import CNNPredictor
from cvpipe.cnn.train import TrainResult, fit_cnn, train_cnn

__all__ = [
    "AirbenchNet",
    "CNNConfig",
    "CNNPredictor",
    "NetConfig",
    "ResNet",
    "TrainResult",
    "build_net",
    "fit_cnn",
    "train_cnn",
]
