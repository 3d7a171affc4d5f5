#!/usr/bin/env bash
# Build a tiny InternVL3 checkpoint and the digits set, convert, fine-tune with tiny.yaml on mindspore, export to HF.
# Run from the directory you want the files in; extra arguments are config overrides (training.train_iters=10).
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../launch.sh"
run_tiny mindspore internvl "$HERE/tiny.yaml" "$@"
