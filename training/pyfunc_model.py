"""The MLflow pyfunc wrapper, logged as code (MLflow's "models from code"), not pickled.

``training.registry.log_model_version`` gives MLflow this file's path: MLflow stores the file
beside the model folder and runs it when the model is loaded, and ``set_model`` hands it the
wrapper. No object is cloudpickled, so a version loads on any Python that can import
``training`` (a pickled class would tie it to the Python and cloudpickle that wrote it).

``predict`` takes a frame with ``user_id`` (a string, as every id in recloop) and, per row,
``k`` (optional, default 10), and returns one row per recommended item: ``user_id``,
``rank``, ``item_id``, ``score``.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from training.registry import ARTIFACT


class RecommenderPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from training.models import load_model

        self.model = load_model(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from training.data import UserQuery

        # k per request row, as a column: a plain frame in, a plain frame out.
        ks = model_input["k"].astype(int).tolist() if "k" in model_input else [10] * len(
            model_input)  # fmt: skip
        users = [UserQuery(user_id=str(u)) for u in model_input["user_id"]]
        rows = []
        ranked = self.model.recommend(users, max(ks, default=0))
        for user, k, items in zip(users, ks, ranked, strict=True):
            for rank, (item_id, score) in enumerate(items[:k]):
                rows.append(
                    {"user_id": user.user_id, "rank": rank, "item_id": item_id, "score": score}
                )
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])


mlflow.models.set_model(RecommenderPyfunc())
