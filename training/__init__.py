"""Training: data sets from Feast (or a MovieLens folder), model kinds, evaluation protocols,
the MLflow registry and the promotion gate."""
