"""Subprocess half of the cross-backend sampling test: seeded sampled tokens on MMX_BACKEND, printed as JSON.

    python infer_sample_runner.py HF_DIR IMAGE_PATH SEED
"""
import json
import sys

from mmx import infer

from infer_helpers import MAX_NEW_TOKENS, SAMPLING


def main(hf_dir, image, seed):
    pipeline = infer.load(hf_dir)
    conversation = [infer.user_message("Describe the image.", images=[image])]
    reply = pipeline.generate([conversation], seed=int(seed), max_new_tokens=MAX_NEW_TOKENS, **SAMPLING)[0]
    print(json.dumps(reply.token_ids))


if __name__ == "__main__":
    main(*sys.argv[1:])
