"""Reading a recipe file: the YAML mapping that replays a run (`slimkit run RECIPE`, the demo's recipes,
each run folder's recipe.yaml), through yaml.safe_load only."""

from pathlib import Path

import yaml

from slimkit.errors import SlimkitError


def read_recipe_file(path: str | Path) -> dict:
    """A YAML recipe's mapping (safe_load) with text keys, or one error line."""
    p = Path(path)
    if p.is_dir():
        raise SlimkitError(f"recipe {p} is a folder; pass a YAML file such as recipes/demo.yaml or a run's recipe.yaml")
    if not p.is_file():
        raise SlimkitError(f"recipe {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise SlimkitError(f"recipe {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise SlimkitError(f"recipe {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SlimkitError(f"recipe {p} must be a mapping of settings, got {type(raw).__name__}")
    odd = [k for k in raw if not isinstance(k, str)]
    if odd:
        raise SlimkitError(f"recipe {p} has setting names that are not text: {odd[:3]}; write each key as a name "
                           f"such as 'dataset'")
    return raw
