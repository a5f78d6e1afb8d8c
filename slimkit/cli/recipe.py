"""A run's recipe (`recipe.yaml` in the result folder, or the header of a checkpoint that prune or distill
wrote; slimkit.cli.app.recipe_of makes what it holds), replayed.

`slimkit run RECIPE` replays it: the same command with the same options, so one file reproduces
a run (the demo's recipes, which hold the demo's settings without a `command` key, still work).
Recipes are read with `yaml.safe_load` and checked key by key against the command's own options
before anything runs: an unknown key or a missing model is one error line.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from slimkit.errors import SlimkitError


def arguments(fn: Any, raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Keyword arguments for a command function: the recipe's values over the command's defaults.

    Checked before the command runs: every key must be one of its options (named as in Python,
    `search_steps` for --search-steps), and every option without a default must be given."""
    params = inspect.signature(inspect.unwrap(fn)).parameters
    unknown = sorted(set(raw) - set(params) - {"command"})
    if unknown:
        raise SlimkitError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(params))}")
    out = {}
    for name, param in params.items():
        default = getattr(param.default, "default", param.default)  # typer's ArgumentInfo / OptionInfo
        value = raw.get(name, default)
        if value is ... or value is inspect.Parameter.empty:
            raise SlimkitError(f"{where}: {name!r} is missing; give it (e.g. {name}: ...)")
        ann = param.annotation
        if value is not None and (ann is Path or Path in getattr(ann, "__args__", ())):
            value = Path(value)
        out[name] = value
    return out


REPLAYED = ("compress", "prune", "distill")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe at `path`: a YAML file (a run folder's recipe.yaml), a result folder holding one, or a
    checkpoint written by slimkit prune or distill (its header records the recipe)."""
    from slimkit.io.recipe import read_recipe_file

    p = Path(path)
    if p.is_dir() and (p / "recipe.yaml").is_file():
        return read_recipe_file(p / "recipe.yaml")
    if p.suffix == ".safetensors" and p.is_file():
        from slimkit.io import read_architecture

        recipe = read_architecture(p)["extra"].get("recipe")
        if not isinstance(recipe, dict):
            raise SlimkitError(f"{p} records no recipe (it was not written by slimkit prune or distill); pass a "
                               f"recipe.yaml")
        return recipe
    return read_recipe_file(p)


def replay(path: str | Path, overwrite: bool) -> bool:
    """Run the command a recipe names; False when it names none (a demo recipe: the caller runs it)."""
    raw = read_recipe(path)
    command = raw.get("command")
    if command is None:
        return False
    if command not in REPLAYED:
        raise SlimkitError(f"recipe {path} names command {command!r}; slimkit run replays {', '.join(REPLAYED)} "
                           f"recipes and the demo's (no command key)")
    from slimkit.cli.compress import compress
    from slimkit.cli.distill import distill
    from slimkit.cli.prune import prune

    fn = {"compress": compress, "prune": prune, "distill": distill}[command]
    kwargs = arguments(fn, raw, f"recipe {path}")
    if kwargs.get("model") is None:
        raise SlimkitError(f"recipe {path} names no model (that run was given a Python object); set model: to a "
                           f"checkpoint, a Hugging Face folder, a built-in name or package.module:factory")
    kwargs["overwrite"] = overwrite
    fn(**kwargs)
    return True
