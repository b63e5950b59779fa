"""The code of every model the framework logs (MLflow's models from code): ``set_model(TrainedNetwork())``.

MLflow copies this file into the model and runs it when the model is loaded; the trained network
itself is in the model's artifacts (see :mod:`framework.tracking.models`).
"""

import mlflow

from framework.tracking.models import TrainedNetwork

mlflow.models.set_model(TrainedNetwork())
