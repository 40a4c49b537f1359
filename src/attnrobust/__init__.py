"""attnrobust: does an attention module make an image classifier more or less robust to adversarial attacks?

The public API, re-exported lazily so that `import attnrobust` (and `attnrobust --help`) does not pay for
importing torch until a function that needs it is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "UserError": "errors",
    "load_dataset": "data",
    "get_spec": "data",
    "DeviceLoader": "data",
    "build_model": "models",
    "list_models": "models",
    "attention_maps": "models",
    "model_info": "models",
    "attention_pairs": "models",
    "ModelInfo": "models",
    "TrainConfig": "config",
    "train": "train",
    "load_model": "checkpoint",
    "fgsm": "attacks",
    "pgd": "attacks",
    "apgd": "attacks",
    "apgd_t": "attacks",
    "square": "attacks",
    "minimal_eps": "attacks",
    "robust_accuracy_curve": "attacks",
    "worst_case": "attacks",
    "AttackConfig": "config",
    "evaluate_checkpoints": "evaluate",
    "load_config": "config",
    "run_study": "study",
    "build_report": "report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"attnrobust.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'attnrobust' has no attribute {name!r}")
