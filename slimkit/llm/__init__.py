"""Compression of pretrained Hugging Face transformers: one-shot, depth and width pruning, KD recovery.

Modules: load (local folders and the built-ins smollm2 / minilm, offline), text (calibration and
evaluation windows), perplexity, oneshot (magnitude, Wanda, SparseGPT, N:M; sequential
calibration), depth, width, recover (top-k logit KD), encoder (MiniLM) and speed.
transformers is imported lazily, inside the functions that need it.
"""
