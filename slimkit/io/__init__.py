"""Checkpoint I/O: everything slimkit reads from or writes to disk for a model, in one package.

- checkpoint.py: one safetensors file holding weights and architecture (`save_model`, `load_model`);
- header.py: building the dense model from a header's builder, on the meta device;
- layout.py: recording and re-applying a cut model's shapes onto its dense form;
- hf_folder.py: Hugging Face folders that plain `from_pretrained` reloads, or `load_hf` where the
  config cannot express the widths;
- outputs.py: the output rules every command follows (never overwrite what slimkit did not write,
  atomic replacement).

The checkpoint functions are re-exported here, so `slimkit.io.load_model` is the public name.
"""

from slimkit.io.checkpoint import (
    FORMAT_VERSION,
    Builder,
    builder_ref,
    cache_root,
    check_description,
    dense_builder,
    import_builder,
    load_model,
    load_state,
    read_architecture,
    read_header,
    save_model,
    split_builder,
    tensors_for_file,
)

__all__ = ["FORMAT_VERSION", "Builder", "builder_ref", "cache_root", "check_description", "dense_builder",
           "import_builder", "load_model", "load_state", "read_architecture", "read_header", "save_model",
           "split_builder", "tensors_for_file"]
