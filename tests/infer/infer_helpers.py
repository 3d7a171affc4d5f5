"""Shared pieces of the inference tests (a module name unique across tests/): media files, conversations, the
transformers greedy reference and memoised mmx runs."""
import numpy as np

from mmx.infer import user_message

MAX_NEW_TOKENS = 4        # a prefill + 3 decode steps; MindSpore on CPU spends ~0.1-0.3 s per step here
KINDS = ("image", "two_images", "video", "text")
# Sampling hot enough that a wrong seed or a wrong draw shows within a few tokens of a 320-token vocabulary.
SAMPLING = dict(do_sample=True, temperature=3.0, top_k=0, top_p=1.0)


def write_media(directory):
    """Two random images of different sizes and a 4 fps, 8-frame random video; returns {name: path}."""
    import av
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = {"a": str(directory / "a.png"), "b": str(directory / "b.png"), "clip": str(directory / "clip.mp4")}
    Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)).save(paths["a"])
    Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(paths["b"])
    with av.open(paths["clip"], "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 56, "yuv420p"
        for _ in range(8):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (56, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return paths


def conversation(kind, media):
    """The one-turn conversation of ``kind`` (prompts of different lengths)."""
    if kind == "image":
        return [user_message("Describe the image.", images=[media["a"]])]
    if kind == "two_images":
        return [user_message("What is in the picture? Answer the question with a short sentence.",
                             images=[media["a"], media["b"]])]
    if kind == "video":
        return [user_message("The video shows", videos=[media["clip"]])]
    return [user_message("The quick brown fox jumps over the lazy dog. There are two dogs and one bird.")]


def until_eos(tokens, eos_ids):
    """``tokens`` up to and including the first EOS id (transformers pads finished rows after it)."""
    tokens = list(tokens)
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:index + 1]
    return tokens


class Reference:
    """transformers' greedy ``generate`` (float32, torch) on a checkpoint directory, memoised per conversation."""

    def __init__(self, model_dir):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.eos = self.model.generation_config.eos_token_id
        self._memo = {}

    def greedy(self, conversations, max_new_tokens=MAX_NEW_TOKENS):
        """Per row the new token ids (through EOS) of a left-padded batch."""
        from mmx.infer.prompts import encode

        key = (repr(conversations), max_new_tokens)
        if key not in self._memo:
            inputs = {name: self.torch.tensor(value) for name, value in encode(self.processor, conversations).items()}
            with self.torch.no_grad():
                out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1]:].tolist()
            self._memo[key] = [until_eos(row, self.eos) for row in new]
        return self._memo[key]
