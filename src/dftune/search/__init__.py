"""The search behind ``dftune tune``, apart from the stage that runs it: the objective (metric), the
search space and the trial seeds (space), Optuna storage, pruner and liveness (study), the train subset
(subset) and what a study leaves behind (outputs). Nothing here imports dftune.stages."""
