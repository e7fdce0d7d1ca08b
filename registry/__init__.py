"""gdflow's model registry: saved model versions (safetensors files in a model store), the
champion of each model name and its history, and prediction with a saved model.

No Prefect here: the Prefect layer (`tasks`, `flows`) and the CLI call these functions.
"""
