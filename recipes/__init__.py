"""The shipped recipes: one YAML file per published setting, installed as package data ``uda_reid.recipes``
(``uda_reid.recipe_lookup`` finds them through importlib.resources)."""
