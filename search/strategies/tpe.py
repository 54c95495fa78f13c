"""tpe: Optuna's multivariate TPE, constant-liar so that cooperating workers stay apart."""
from __future__ import annotations

import optuna

from search.strategies.base import STARTUP_TRIALS, Strategy


def tpe_sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    # multivariate TPE models the interaction of tile sizes; constant_liar keeps cooperating
    # workers from proposing the point another is measuring
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=STARTUP_TRIALS)


class Tpe(Strategy):
    name = "tpe"
    description = "Optuna's multivariate TPE"

    def sampler(self):
        return tpe_sampler(self.seed)
