"""The demo: train, prune and distil slimkit's own models on a built-in dataset, and the headline run
that compresses one of them and compares KD against CE recovery (`slimkit demo`, `make demo`).

It sits above compression/ and below cli/: it uses the product the way a user would."""
