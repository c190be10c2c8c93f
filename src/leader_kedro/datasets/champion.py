"""``ChampionModelDataset``: kedro-mlflow's registry dataset, with an ``exists`` that asks the
registry whether the alias is set.

The score pipeline reads ``models:/leader-student@champion`` through it. Kedro-mlflow's
``MlflowModelRegistryDataset`` has no ``exists``, so a registry without a champion would only
show up as a failed load deep in the run. With this ``exists``, the project's
``MissingArtifactHook`` stops ``kedro run --pipeline=score`` before any node, naming the
artifact and the command that makes a champion (``kedro run``, or ``kedro run
--pipeline=distill`` once the features exist).
"""

from __future__ import annotations

from kedro_mlflow.io.models import MlflowModelRegistryDataset


class ChampionModelDataset(MlflowModelRegistryDataset):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # what the project's messages and kedro-viz show as its location (unused for loading)
        self._filepath = self.model_uri  # type: ignore[assignment]

    def _exists(self) -> bool:
        import mlflow
        from mlflow.exceptions import MlflowException

        client = mlflow.MlflowClient()
        try:
            if self.alias:
                client.get_model_version_by_alias(self.model_name, self.alias)
            else:
                if not client.search_model_versions(f"name='{self.model_name}'", max_results=1):
                    return False
        except MlflowException:
            return False
        return True
