"""Typed run configuration, strict YAML recipes and command-line overrides.

The dataclass defaults are the paper-scale settings; a recipe (one YAML per published setting in
``recipes/``) overrides them, and command-line flags override the recipe. Recipes are strict: a
misspelled key is an error naming the key, the file and the valid keys, never silently ignored.
The resolved configuration is saved in every run folder.

Every setting declares its rule once, next to its field: the type is the annotation, the range or
the allowed words are given to :func:`setting` (``lr: float = setting(3.5e-4, limit=POSITIVE)``),
and relations between keys of a section are its ``relations``. The same declarations check every
source of a value (recipe, ``extends``, ``--set``, flags, ``method_options`` against the method's
``Options``, dataset options against the loader's annotated parameters) with one-line errors such
as ``--set optim.lr=-1: optim.lr must be > 0, got -1``; :func:`check_config` checks a whole config.
Add-ons declare their own sections (their ``Options``), which the RunConfig holds like its own.

The package, by job: :mod:`.rules` (how a setting declares its rule), :mod:`.sections` (the sections
and RunConfig), :mod:`.checking` (values against declarations, one-line errors), :mod:`.loading`
(recipes, ``--set``, ``config.yaml``). Everything is imported from ``uda_reid.config``.
"""

from ..recipe_lookup import extends_target, find_recipe, recipes_dir
from .checking import (
    FALSE_WORDS,
    NULL_WORDS,
    TRUE_WORDS,
    check_config,
    check_section,
    choices_of,
    options_of_function,
    parse_free_value,
    undeclared_keys,
    update_dataclass,
)
from .loading import apply_overrides, config_from_dict, config_to_dict, load_recipe, parse_set_options, save_config
from .rules import (
    ASCENDING_PAIR,
    AT_LEAST_ONE,
    DATASET_SPEC,
    DATASET_SPECS,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    RULE_KEY,
    UNIT_INTERVAL_OPEN,
    UP_TO_ONE,
    Limit,
    Relation,
    Rule,
    at_most,
    names_in,
    rule_of,
    setting,
)
from .sections import (
    AUTO_NORMALIZATION,
    NORMALIZATIONS,
    PATCH,
    PRECISIONS,
    AdaptConfig,
    ClusteringConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
    SpeedConfig,
    TrainConfig,
    section_types,
)

__all__ = [
    "ASCENDING_PAIR", "AT_LEAST_ONE", "AUTO_NORMALIZATION", "PATCH", "DATASET_SPEC", "DATASET_SPECS", "FALSE_WORDS", "FRACTION", "NON_NEGATIVE",
    "NORMALIZATIONS", "NULL_WORDS", "POSITIVE", "PRECISIONS", "PROBABILITY", "RULE_KEY", "TRUE_WORDS",
    "UNIT_INTERVAL_OPEN", "UP_TO_ONE", "AdaptConfig", "ClusteringConfig", "DataConfig", "Limit", "ModelConfig",
    "OptimConfig", "PretrainConfig", "Relation", "Rule", "RunConfig", "SpeedConfig", "TrainConfig", "apply_overrides", "at_most",
    "check_config", "check_section", "choices_of", "config_from_dict", "config_to_dict", "extends_target",
    "find_recipe", "load_recipe", "names_in", "options_of_function", "parse_free_value", "parse_set_options",
    "recipes_dir", "rule_of", "save_config", "section_types", "setting", "undeclared_keys", "update_dataclass",
]
